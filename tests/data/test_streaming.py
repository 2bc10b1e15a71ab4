"""`--streaming`: sharded manifests read as a stream, every example once per epoch over ranks and workers,
token-budget batches from a bounded buffer, exact resume by skipping consumed batches (no features for them)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from funasr_nano_hf.data.augmentation import Augmentation
from funasr_nano_hf.data.collator import FunAsrNanoCollator
from funasr_nano_hf.data.featurize import DataConfig, build_dataset
from funasr_nano_hf.data.streaming import StreamingBatches

CLIPS = 24


@pytest.fixture(scope="module")
def shards(shared_dir, tmp_path_factory) -> list[Path]:
    """The first CLIPS shared training clips in three JSONL shards (absolute paths)."""
    tts = shared_dir / "data" / "tts"
    folder = tmp_path_factory.mktemp("shards")
    rows = [json.loads(line) for line in (tts / "train.jsonl").read_text(encoding="utf-8").splitlines()[:CLIPS]]
    paths = []
    for n in range(3):
        part = [{**row, "wav": str((tts / row["wav"]).resolve())} for row in rows[n::3]]
        path = folder / f"part-{n}.jsonl"
        path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in part) + "\n", encoding="utf-8")
        paths.append(path)
    return paths


def _stream(shards, processor, **kwargs) -> StreamingBatches:
    options = {"batch_size": 2500, "sort_size": 8, "seed": 3, **kwargs}
    return StreamingBatches([str(s) for s in shards], processor, DataConfig(), **options)


def _keys(batches) -> list[list[str]]:
    return [[e["key"] for e in batch] for batch in batches]


def test_every_example_once_per_epoch_over_ranks_and_workers(tiny_model, shards):
    _, processor = tiny_model
    for epoch in (0, 1):
        seen = Counter()
        for slot in range(4):  # 2 ranks x 2 workers
            for batch in _stream(shards, processor).epoch_batches(epoch, slot, 4):
                assert max(e["num_frames"] for e in batch) * len(batch) <= 2500 or len(batch) == 1
                seen.update(e["key"] for e in batch)
        assert len(seen) == CLIPS and set(seen.values()) == {1}
    first, second = (_keys(_stream(shards, processor).epoch_batches(e)) for e in (0, 1))
    assert first != second  # reshuffled per epoch


def test_stream_features_equal_the_map_style_path(tiny_model, shards, tmp_path):
    _, processor = tiny_model
    dataset, _ = build_dataset([str(s) for s in shards], processor, DataConfig(cache_dir=str(tmp_path)))
    by_key = {row["key"]: row for row in dataset}
    batch = next(iter(_stream(shards, processor)))
    for example in batch:
        np.testing.assert_array_equal(example["input_features"], by_key[example["key"]]["input_features"])
        assert example["input_ids"] == by_key[example["key"]]["input_ids"]


def _loader_batches(stream, processor, workers: int, count: int) -> list[dict]:
    collator = FunAsrNanoCollator(pad_token_id=processor.tokenizer.pad_token_id)
    loader = DataLoader(stream, batch_size=None, collate_fn=collator, num_workers=workers)
    out = []
    for batch in loader:
        out.append(batch)
        if len(out) == count:
            return out
    return out


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_skips_to_the_same_batches(tiny_model, shards, workers):
    """A run resumed after k batches continues with batch k of the uninterrupted stream, across epochs."""
    _, processor = tiny_model
    augmentation = Augmentation(dither=1.0, seed=3)
    whole = _loader_batches(_stream(shards, processor, augmentation=augmentation), processor, workers, 9)
    resumed_stream = _stream(shards, processor, augmentation=augmentation)
    resumed_stream.set_skip(5)
    resumed = _loader_batches(resumed_stream, processor, workers, 4)
    for a, b in zip(whole[5:], resumed, strict=True):
        assert a.keys() == b.keys()
        for name in a:
            assert torch.equal(a[name], b[name]), name
