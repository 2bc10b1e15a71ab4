#!/usr/bin/env python
"""Decoding throughput, side by side in one run: our batched greedy `generate` at batch 1 / 8 / 16 vs FunASR's
own per-utterance inference (its `FunASRNano` through `inference_prepare` + `llm.generate`, one clip per call)
on the same weights and clips (real architecture by default, random weights, CPU, fp32). Transcripts are
compared token for token.

    python benchmarks/decode.py [--size real|tiny] [--clips 16] [--max-new-tokens 16]
"""

from __future__ import annotations

import argparse
import glob
import tempfile
import time
from pathlib import Path

import soundfile as sf

from funasr_nano_hf import load_pretrained
from funasr_nano_hf.inference import generate_ids
from funasr_nano_hf.models import prompting
from funasr_nano_hf.testing.funasr_checkpoint import write_original_checkpoint
from funasr_nano_hf.testing.funasr_reference import FunASRReference

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=["real", "tiny"], default="real")
    parser.add_argument("--clips", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    args = parser.parse_args()
    paths = sorted(glob.glob(str(SHARED / "tts" / "wav" / "valid" / "*.wav")))[: args.clips]
    waveforms = [sf.read(p, dtype="float32")[0] for p in paths]
    audio = sum(len(w) for w in waveforms) / 16000
    instruction = prompting.instruction()
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_original_checkpoint(Path(tmp) / "ckpt", size=args.size, seed=0)
        reference = FunASRReference(folder)
        started = time.perf_counter()
        funasr_ids = [reference.greedy(p, instruction, max_new_tokens=args.max_new_tokens) for p in paths]
        funasr_seconds = time.perf_counter() - started
        del reference
        model, processor = load_pretrained(folder)
        rows = []
        for batch_size in (1, 8, 16):
            ours: list[list[int]] = []
            started = time.perf_counter()
            for start in range(0, len(waveforms), batch_size):
                ids = generate_ids(
                    model, processor, waveforms[start : start + batch_size], max_new_tokens=args.max_new_tokens
                )
                ours += [[t for t in row.tolist() if t != processor.tokenizer.pad_token_id] for row in ids]
            seconds = time.perf_counter() - started
            same = sum(a == [t for t in b if t != processor.tokenizer.pad_token_id] for a, b in zip(ours, funasr_ids))
            rows.append((batch_size, seconds, same))
    print(
        f"{args.size} architecture, random weights, fp32, CPU; {len(paths)} clips ({audio:.1f} s audio); "
        f"greedy, {args.max_new_tokens} new tokens max"
    )
    print(f"{'decoder':24s} {'seconds':>8s} {'utt/s':>7s} {'x FunASR':>8s} {'identical':>9s}")
    print(f"{'FunASR per utterance':24s} {funasr_seconds:8.2f} {len(paths) / funasr_seconds:7.2f} {1.0:8.2f} {'-':>9s}")
    for batch_size, seconds, same in rows:
        print(
            f"{f'ours batch {batch_size}':24s} {seconds:8.2f} {len(paths) / seconds:7.2f} "
            f"{funasr_seconds / seconds:8.2f} {same:>4d}/{len(paths)}"
        )


if __name__ == "__main__":
    main()
