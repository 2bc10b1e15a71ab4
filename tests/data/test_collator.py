"""Padding: right for training (labels -100), left prompt-only for generation, frame masks for audio."""

from __future__ import annotations

import numpy as np
import torch

from funasr_nano_hf.data.collator import IGNORE_INDEX, FunAsrNanoCollator


def _example(frames: int, prompt: int, target: int) -> dict:
    ids = list(range(1, prompt + target + 1))
    return {
        "input_features": np.full((frames, 4), float(frames), dtype=np.float32),
        "input_ids": ids,
        "labels": [IGNORE_INDEX] * prompt + ids[prompt:],
        "prompt_length": prompt,
    }


def test_training_batch_is_right_padded():
    batch = FunAsrNanoCollator(pad_token_id=0)([_example(5, 3, 2), _example(2, 2, 1)])
    assert batch["input_features"].shape == (2, 5, 4)
    assert batch["input_features_mask"].tolist() == [[1] * 5, [1, 1, 0, 0, 0]]
    assert torch.all(batch["input_features"][1, 2:] == 0)
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4, 5], [1, 2, 3, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, -100, -100, 4, 5], [-100, -100, 3, -100, -100]]


def test_generation_batch_keeps_prompts_left_padded():
    batch = FunAsrNanoCollator(pad_token_id=9, for_generation=True)([_example(5, 3, 2), _example(2, 1, 1)])
    assert "labels" not in batch
    assert batch["input_ids"].tolist() == [[1, 2, 3], [9, 9, 1]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]


def test_cached_audio_embeddings_are_padded_with_their_own_mask():
    rows = [
        {"audio_embeds": np.ones((3, 2)), "input_ids": [1], "labels": [1]},
        {"audio_embeds": np.ones((1, 2)), "input_ids": [1], "labels": [1]},
    ]
    batch = FunAsrNanoCollator(pad_token_id=0)(rows)
    assert "input_features" not in batch
    assert batch["audio_embeds_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
