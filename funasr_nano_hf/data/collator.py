"""Pad featurized examples into model batches.

Training pads text on the right (labels with -100); generation needs the prompt alone, padded on the
LEFT so that every row's prompt ends where decoding starts. Audio features are always right-padded
with a frame mask (the encoder and adaptor mask padding).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.nn.utils.rnn import pad_sequence

IGNORE_INDEX = -100


def _pad(rows: list[torch.Tensor], value: float, side: str) -> torch.Tensor:
    return pad_sequence(rows, batch_first=True, padding_value=value, padding_side=side)


@dataclass
class FunAsrNanoCollator:
    """`for_generation=True` keeps only each example's prompt (its first `prompt_length` ids)."""

    pad_token_id: int
    for_generation: bool = False

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if not examples:
            raise ValueError("cannot collate an empty batch")
        # Frozen-path caching stores the LLM-visible audio embeddings instead of the features.
        audio_key = "audio_embeds" if "audio_embeds" in examples[0] else "input_features"
        features = [torch.as_tensor(np.asarray(e[audio_key]), dtype=torch.float32) for e in examples]
        frames = torch.tensor([f.shape[0] for f in features])
        batch = {
            audio_key: _pad(features, 0.0, "right"),
            f"{audio_key}_mask": (torch.arange(int(frames.max()))[None, :] < frames[:, None]).long(),
        }
        ids = [torch.as_tensor(e["input_ids"], dtype=torch.long) for e in examples]
        if self.for_generation:
            ids = [row[: int(e["prompt_length"])] for row, e in zip(ids, examples)]
            side = "left"
        else:
            side = "right"
            batch["labels"] = _pad(
                [torch.as_tensor(e["labels"], dtype=torch.long) for e in examples], IGNORE_INDEX, side
            )
        batch["input_ids"] = _pad(ids, self.pad_token_id, side)
        batch["attention_mask"] = _pad([torch.ones_like(row) for row in ids], 0, side)
        return batch
