#!/usr/bin/env python
"""Data pipeline at corpus scale: this package's training data path next to FunASR's own, side by side, one run.

A synthetic ChatML manifest of `--size` utterances (FunASR's format with `speech_length`/`text_length`, distinct
keys, audio paths cycling over the shared clips) is loaded by each pipeline in its own process:

* ours: `build_dataset` (records + cached lengths/token ids; features on the fly) + FunASR's token batch sampler
  (`build_batch_sampler`) + `DataLoader(num_workers=W)` with `FunAsrNanoCollator`;
* FunASR: its `FunASR` dataset (`fun_asr_datasets`), its `BatchSampler` (`CustomDistributedBufferDynamicBatchSampler`)
  and a `DataLoader(num_workers=W)` with its collator, as its trainer builds them (the frontend and tokenizer from
  `funasr.AutoModel` on a tiny model in the original layout, FunASR's real Qwen3 tokenizer and WavFrontend).

Per pipeline and worker count: time to the first batch (data side only: dataset + sampler + loader + first batch,
the model's step is not included), disk added (ours: the datasets cache; FunASR writes none), peak RSS of the main
process and of its loader workers, and steady throughput (audio seconds per wall second over `--batches` batches
after the first). Both use the manifest's lengths and a token budget of `--batch_size` (fbank frames + text tokens
of the longest example times the examples, FunASR's meaning), dither 0.

    python benchmarks/data_scale.py --size 100000 --workers 0 2      # the issue's size (~100 h); takes a while
    python benchmarks/data_scale.py --size 2000 --batches 10          # a quick check
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LFR_SECONDS = 0.06  # one LFR frame (6 x 10 ms fbank frames)
SPEECH_SPAN = re.compile(r"<\|startofspeech\|>!(.*?)<\|endofspeech\|>")


def synthetic_manifest(shared: Path, size: int, dest: Path) -> tuple[Path, float, int]:
    """`size` ChatML lines over the shared training clips (absolute paths, distinct keys); (path, audio hours,
    audio bytes as if every line had its own file)."""
    tts = shared / "data" / "tts"
    rows = [json.loads(line) for line in (tts / "train_chatml.jsonl").read_text(encoding="utf-8").splitlines()]
    for row in rows:
        user = row["messages"][1]
        wav = SPEECH_SPAN.search(user["content"])[1]
        user["content"] = user["content"].replace(wav, str((tts / wav).resolve()))
        row["_stem"] = Path(wav).stem
        row["_bytes"] = (tts / wav).stat().st_size
    frames = audio_bytes = 0
    with dest.open("w", encoding="utf-8") as out:
        for i in range(size):
            row = dict(rows[i % len(rows)])
            row["key"] = f"{row.pop('_stem')}_{i:07d}"
            audio_bytes += row.pop("_bytes")
            frames += row["speech_length"]
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
    return dest, frames / 100 / 3600, audio_bytes


def _folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) if folder.exists() else 0


def _peak_rss_mb() -> tuple[float, float]:
    """(this process, its largest reaped child) peak RSS in MB (Linux reports KB)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return own, children


def _measure(loader, batches: int, audio_seconds) -> dict[str, float]:
    iterator = iter(loader)
    first = next(iterator)
    first_at = time.perf_counter()
    seconds, count = 0.0, 0
    for batch in iterator:
        seconds += audio_seconds(batch)
        count += 1
        if count == batches:
            break
    steady = time.perf_counter() - first_at
    del iterator  # workers exit (their peak RSS becomes readable)
    return {"first": first, "first_at": first_at, "steady_s": steady, "audio_s": seconds, "batches": count}


def run_ours(args: argparse.Namespace) -> dict[str, float]:
    from torch.utils.data import DataLoader

    from funasr_nano_hf import load_pretrained
    from funasr_nano_hf.data.collator import FunAsrNanoCollator
    from funasr_nano_hf.data.featurize import DataConfig, build_dataset, source_lengths
    from funasr_nano_hf.data.samplers import build_batch_sampler

    _, processor = load_pretrained(args.model_dir)
    cache = Path(args.work) / f"cache_w{args.workers}"
    started = time.perf_counter()
    config = DataConfig(cache_dir=str(cache), num_proc=args.num_proc, max_source_length=10**6, max_target_length=10**6)
    dataset, _ = build_dataset([args.manifest], processor, config)
    sampler = build_batch_sampler("token", source_lengths(dataset), batch_size=args.batch_size, seed=0)
    loader = DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=FunAsrNanoCollator(pad_token_id=processor.tokenizer.pad_token_id),
        num_workers=args.workers,
    )
    result = _measure(loader, args.batches, lambda b: float(b["input_features_mask"].sum()) * LFR_SECONDS)
    return {
        "first_batch_s": result["first_at"] - started,
        "disk_mb": _folder_bytes(cache) / 2**20,
        "throughput": result["audio_s"] / result["steady_s"],
        "batches": result["batches"],
    }


def run_funasr(args: argparse.Namespace) -> dict[str, float]:
    import torch
    from funasr import AutoModel
    from funasr.register import tables

    auto = AutoModel(
        model=args.model_dir, device="cpu", disable_update=True, disable_pbar=True, frontend_conf={"dither": 0.0}
    )
    frontend, tokenizer = auto.kwargs["frontend"], auto.kwargs["tokenizer"]
    started = time.perf_counter()
    conf = {
        "index_ds": "FunASR",
        "batch_type": "token",
        "batch_size": args.batch_size,
        "sort_size": 1024,
        "num_workers": args.workers,
        "max_source_length": 10**6,
        "max_target_length": 10**6,
        "shuffle": True,
    }
    dataset = tables.dataset_classes.get("FunASR")(
        args.manifest, frontend=frontend, tokenizer=tokenizer, is_training=True, **conf
    )
    loader_args = tables.batch_sampler_classes.get("BatchSampler")(dataset, **conf)
    loader_args["pin_memory"] = False
    loader = torch.utils.data.DataLoader(dataset, collate_fn=dataset.collator, **loader_args)
    result = _measure(loader, args.batches, lambda b: float(b["speech_lengths"].sum()) * LFR_SECONDS)
    return {
        "first_batch_s": result["first_at"] - started,
        "disk_mb": 0.0,
        "throughput": result["audio_s"] / result["steady_s"],
        "batches": result["batches"],
    }


def _side(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(1)  # one core per process, as in a loader worker
    result = run_ours(args) if args.side == "ours" else run_funasr(args)
    result["rss_mb"], result["worker_rss_mb"] = _peak_rss_mb()
    Path(args.result).write_text(json.dumps(result))


def _tiny_model_dir(work: Path) -> Path:
    from funasr_nano_hf.testing.funasr_checkpoint import write_original_checkpoint

    return write_original_checkpoint(work / "tiny_original", size="tiny", seed=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=100_000, help="utterances in the synthetic manifest")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--batches", type=int, default=50, help="batches timed after the first")
    parser.add_argument("--batch_size", type=int, default=6000, help="token budget per batch (FunASR's meaning)")
    parser.add_argument(
        "--num_proc",
        type=int,
        help="ours: processes for the cached length/token map (--feature_num_proc); default: the loader's worker "
        "count (at least 1), as a run with --num_workers W would set it",
    )
    parser.add_argument("--shared", default=os.environ.get("FUNASR_NANO_HF_SHARED", "/work/shared"))
    parser.add_argument("--model_dir", help="an original-layout model folder (default: a tiny one, built)")
    parser.add_argument("--side", choices=["ours", "funasr"], help=argparse.SUPPRESS)
    parser.add_argument("--manifest", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        args.workers = args.workers[0]
        args.num_proc = max(args.workers, 1) if args.num_proc is None else args.num_proc
        _side(args)
        return
    work = Path(tempfile.mkdtemp(prefix="data_scale_"))
    try:
        manifest, hours, audio_bytes = synthetic_manifest(Path(args.shared), args.size, work / "manifest.jsonl")
        model_dir = args.model_dir or str(_tiny_model_dir(work))
        print(
            f"manifest: {args.size} utterances, {hours:.1f} h of audio ({audio_bytes / 1e9:.2f} GB counted once per "
            f"utterance; clips shared), {os.cpu_count()} CPU cores"
        )
        rows = []
        for side in ("ours", "funasr"):
            for workers in args.workers:
                result_path = work / f"{side}_{workers}.json"
                command = [sys.executable, __file__, "--side", side, "--workers", str(workers), "--manifest",
                           str(manifest), "--work", str(work), "--result", str(result_path), "--model_dir",
                           str(model_dir), "--batches", str(args.batches), "--batch_size", str(args.batch_size),
                           *(["--num_proc", str(args.num_proc)] if args.num_proc is not None else [])]  # fmt: skip
                done = subprocess.run(command, capture_output=True, text=True)
                if done.returncode:
                    raise SystemExit(f"{side} with {workers} workers failed:\n{done.stderr[-4000:]}")
                rows.append((side, workers, json.loads(result_path.read_text())))
        print(
            "| pipeline | workers | first batch (s) | disk added (MB) | peak RSS main / worker (MB) "
            "| throughput (audio s / wall s) | batches timed |"
        )
        print("|---|---|---|---|---|---|---|")
        for side, workers, r in rows:
            name = "funasr_nano_hf (on the fly)" if side == "ours" else "FunASR (its dataset + sampler)"
            print(
                f"| {name} | {workers} | {r['first_batch_s']:.1f} | {r['disk_mb']:.1f} | "
                f"{r['rss_mb']:.0f} / {r['worker_rss_mb']:.0f} | {r['throughput']:.0f} | {r['batches']} |"
            )
        for side, workers, r in rows:
            if side == "ours":
                share = r["disk_mb"] * 2**20 / audio_bytes * 100
                print(f"ours, {workers} workers: disk added {r['disk_mb']:.1f} MB = {share:.2f} % of the audio")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
