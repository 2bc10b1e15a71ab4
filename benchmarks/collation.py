#!/usr/bin/env python
"""Fetch + collation time per batch of precomputed features: before (rows as nested Python lists, converted and
padded one by one) and after (the dataset's numpy format, one preallocated batch, `FunAsrNanoCollator`).

    python benchmarks/collation.py --data ../shared/data/tts/train.jsonl --batch 16 --rounds 20
"""

from __future__ import annotations

import argparse
import tempfile
import time
from typing import Any

import numpy as np
import torch
from torch.nn.utils.rnn import pad_sequence

from funasr_nano_hf.data.collator import FunAsrNanoCollator
from funasr_nano_hf.data.featurize import DataConfig, build_dataset, plain
from funasr_nano_hf.models import FunAsrNanoHfFeatureExtractor, FunAsrNanoHfProcessor
from funasr_nano_hf.testing.qwen_tokenizer import build_qwen3_tokenizer


def collate_before(examples: list[dict[str, Any]]) -> torch.Tensor:
    """The features as the collator padded them before: per-example conversion of nested lists."""
    features = [torch.as_tensor(np.asarray(e["input_features"]), dtype=torch.float32) for e in examples]
    frames = torch.tensor([f.shape[0] for f in features])
    padded = pad_sequence(features, batch_first=True)
    _ = (torch.arange(int(frames.max()))[None, :] < frames[:, None]).long()
    return padded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data/tts/train.jsonl")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    processor = FunAsrNanoHfProcessor(FunAsrNanoHfFeatureExtractor(), build_qwen3_tokenizer())
    collator = FunAsrNanoCollator(pad_token_id=processor.tokenizer.pad_token_id)
    with tempfile.TemporaryDirectory() as tmp:
        config = DataConfig(cache_dir=tmp, precompute_features=True)
        dataset, _ = build_dataset([args.data], processor, config)
        lists = plain(dataset)
        rng = np.random.default_rng(0)
        batches = [rng.choice(len(dataset), args.batch, replace=False).tolist() for _ in range(args.rounds)]

        def timed(fn) -> float:
            started = time.perf_counter()
            for indices in batches:
                fn(indices)
            return (time.perf_counter() - started) / len(batches) * 1000

        before = timed(lambda idx: collate_before(lists.__getitems__(idx)))
        after = timed(lambda idx: collator(dataset.__getitems__(idx)))
        check = collator(dataset.__getitems__(batches[0]))["input_features"]
        assert torch.equal(check, collate_before(lists.__getitems__(batches[0])))
    print(f"batch of {args.batch}, {args.rounds} rounds, fetch + collate per batch:")
    print(f"  before (nested lists): {before:8.1f} ms")
    print(f"  after (numpy format):  {after:8.1f} ms   ({before / after:.1f}x faster)")


if __name__ == "__main__":
    main()
