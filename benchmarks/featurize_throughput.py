#!/usr/bin/env python
"""Featurization throughput (audio-seconds per wall-second) at num_proc 1 and 2, and the cached re-run
time as a fraction of the first, measured side by side in one run.

The processor is Fun-ASR-Nano's (FunASR fbank/LFR + the real Qwen3 tokenizer, built offline). Each
measurement uses a fresh datasets cache; the "cached" run repeats the num_proc=1 config on the same cache.

    python benchmarks/featurize_throughput.py --data ../shared/data/tts/train.jsonl --repeat 1 4
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from funasr_nano_hf.data.featurize import DataConfig, build_dataset, plain
from funasr_nano_hf.models import FunAsrNanoHfFeatureExtractor, FunAsrNanoHfProcessor
from funasr_nano_hf.testing.qwen_tokenizer import build_qwen3_tokenizer


def repeated_manifest(source: Path, repeat: int, folder: Path) -> Path:
    """The manifest `repeat` times over (unique keys), with audio paths made absolute."""
    lines = []
    for copy in range(repeat):
        for line in source.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            row["key"] = f"{row['key']}_r{copy}"
            row["wav"] = str((source.parent / row["wav"]).resolve())
            lines.append(json.dumps(row, ensure_ascii=False))
    path = folder / f"x{repeat}.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def timed_build(manifest: Path, processor, cache_dir: str, num_proc: int) -> tuple[float, float]:
    started = time.perf_counter()
    config = DataConfig(num_proc=num_proc, cache_dir=cache_dir, precompute_features=True)
    dataset, _ = build_dataset([str(manifest)], processor, config)
    elapsed = time.perf_counter() - started
    audio_seconds = sum(plain(dataset)["num_frames"]) / 100.0
    return elapsed, audio_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data/tts/train.jsonl")
    parser.add_argument("--repeat", type=int, nargs="+", default=[1, 4])
    args = parser.parse_args()
    processor = FunAsrNanoHfProcessor(FunAsrNanoHfFeatureExtractor(), build_qwen3_tokenizer())
    print(f"machine: {os.cpu_count()} CPU cores; processor: FunASR fbank+LFR, Qwen3 tokenizer")
    print(
        f"{'set':>6s} {'clips':>6s} {'audio s':>8s} {'np=1 s':>8s} {'np=1 x RT':>9s} {'np=2 s':>8s} "
        f"{'np=2 x RT':>9s} {'np2/np1':>7s} {'cached s':>8s} {'cached/first':>12s}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in args.repeat:
            manifest = repeated_manifest(Path(args.data), repeat, Path(tmp))
            cache1, cache2 = tempfile.mkdtemp(dir=tmp), tempfile.mkdtemp(dir=tmp)
            first, audio = timed_build(manifest, processor, cache1, 1)
            cached, _ = timed_build(manifest, processor, cache1, 1)
            two, _ = timed_build(manifest, processor, cache2, 2)
            clips = len(Path(manifest).read_text().splitlines())
            print(
                f"x{repeat:<5d} {clips:6d} {audio:8.1f} {first:8.2f} {audio / first:9.1f} {two:8.2f} "
                f"{audio / two:9.1f} {first / two:7.2f} {cached:8.2f} {cached / first:12.3f}"
            )


if __name__ == "__main__":
    main()
