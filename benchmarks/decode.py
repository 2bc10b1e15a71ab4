#!/usr/bin/env python
"""Decoding throughput, side by side in one run: our batched greedy `generate` at batch 1 / 8 / 16 (clips sorted by
duration into batches, results back in input order, as `transcribe` does) vs FunASR's
own per-utterance inference (its `FunASRNano` through `inference_prepare` + `llm.generate`, one clip per call)
on the same weights and clips (real architecture by default, random weights, CPU, fp32). Transcripts are
compared token for token.

    python benchmarks/decode.py [--size real|tiny] [--clips 16] [--max-new-tokens 16] [--mixed] [--batches 1,8,16]

`--mixed`: clips of 1-20 s (joined shared TTS clips, `perf.write_clips`) instead of the shared 1-4 s valid clips.
Peak RSS: FunASR's decoding process vs ours (each side runs in a subprocess of its own).
"""

from __future__ import annotations

import argparse
import glob
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
from perf import peak_rss_gb, write_clips

from funasr_nano_hf import load_pretrained
from funasr_nano_hf.inference import generate_ids
from funasr_nano_hf.models import prompting
from funasr_nano_hf.testing.funasr_checkpoint import write_original_checkpoint
from funasr_nano_hf.testing.funasr_reference import FunASRReference

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def run_funasr(folder: str, paths: list[str], max_new_tokens: int) -> dict:
    reference = FunASRReference(folder)
    instruction = prompting.instruction()
    started = time.perf_counter()
    ids = [reference.greedy(p, instruction, max_new_tokens=max_new_tokens) for p in paths]
    return {"seconds": time.perf_counter() - started, "ids": ids, "peak_rss_gb": peak_rss_gb()}


def run_ours(folder: str, paths: list[str], max_new_tokens: int, batches: list[int]) -> dict:
    waveforms = [sf.read(p, dtype="float32")[0] for p in paths]
    model, processor = load_pretrained(folder)
    pad = processor.tokenizer.pad_token_id
    rows = []
    order = sorted(range(len(waveforms)), key=lambda i: len(waveforms[i]), reverse=True)  # as `transcribe` batches
    for batch_size in batches:
        ours: list[list[int]] = [[] for _ in waveforms]
        started = time.perf_counter()
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            ids = generate_ids(model, processor, [waveforms[i] for i in chunk], max_new_tokens=max_new_tokens)
            for index, row in zip(chunk, ids.tolist()):
                ours[index] = [t for t in row if t != pad]
        rows.append({"batch": batch_size, "seconds": time.perf_counter() - started, "ids": ours})
    return {"rows": rows, "pad": pad, "peak_rss_gb": peak_rss_gb()}


def _subprocess(args: list[str]) -> dict:
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True)
    line = next((row for row in out.stdout.splitlines() if row.startswith("RESULT ")), None)
    if line is None:
        raise SystemExit(f"{args[:2]} failed:\n{out.stderr[-3000:]}")
    return json.loads(line[7:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=["real", "tiny"], default="real")
    parser.add_argument("--clips", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--mixed", action="store_true", help="clips of 1-20 s instead of the shared valid clips")
    parser.add_argument("--batches", default="1,8,16")
    parser.add_argument("--side", choices=["funasr", "ours"], default=None, help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", default=None, help="original-layout folder (default: build one of --size)")
    parser.add_argument("--paths", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    if args.side:
        paths = json.loads(args.paths)
        if args.side == "funasr":
            result = run_funasr(args.checkpoint, paths, args.max_new_tokens)
        else:
            result = run_ours(args.checkpoint, paths, args.max_new_tokens, batches)
        print("RESULT " + json.dumps(result))
        return
    with tempfile.TemporaryDirectory() as tmp:
        if args.mixed:
            lengths = np.random.default_rng(0).uniform(1.0, 20.0, size=args.clips).round(1).tolist()
            paths = [row["wav"] for row in write_clips(Path(tmp) / "mixed", lengths)]
        else:
            paths = sorted(glob.glob(str(SHARED / "tts" / "wav" / "valid" / "*.wav")))[: args.clips]
        audio = sum(sf.info(p).duration for p in paths)
        folder = args.checkpoint or str(write_original_checkpoint(Path(tmp) / "ckpt", size=args.size, seed=0))
        common = ["--checkpoint", folder, "--paths", json.dumps(paths), "--max-new-tokens", str(args.max_new_tokens)]
        funasr = _subprocess(["--side", "funasr", *common])
        ours = _subprocess(["--side", "ours", "--batches", args.batches, *common])
    funasr_seconds = funasr["seconds"]
    kind = "mixed 1-20 s" if args.mixed else "shared valid"
    print(
        f"{args.size} architecture, random weights, fp32, CPU; {len(paths)} {kind} clips ({audio:.1f} s audio); "
        f"greedy, {args.max_new_tokens} new tokens max"
    )
    print(f"{'decoder':24s} {'seconds':>8s} {'utt/s':>7s} {'x FunASR':>8s} {'identical':>9s}")
    print(f"{'FunASR per utterance':24s} {funasr_seconds:8.2f} {len(paths) / funasr_seconds:7.2f} {1.0:8.2f} {'-':>9s}")
    for row in ours["rows"]:
        same = sum(a == [t for t in b if t != ours["pad"]] for a, b in zip(row["ids"], funasr["ids"]))
        label = f"ours batch {row['batch']}"
        print(
            f"{label:24s} {row['seconds']:8.2f} {len(paths) / row['seconds']:7.2f} "
            f"{funasr_seconds / row['seconds']:8.2f} {same:>4d}/{len(paths)}"
        )
    print(f"peak RSS GB (load + decode): FunASR {funasr['peak_rss_gb']:.2f}, ours {ours['peak_rss_gb']:.2f}")


if __name__ == "__main__":
    main()
