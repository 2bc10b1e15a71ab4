#!/usr/bin/env python
"""Growth curves of ours (one process, one model, CPU, fp32, random weights of the chosen architecture):

* LoRA step time per audio-second for batch 1/4/8/16 x clip length 2/5/10/20 s (forward + backward + AdamW on the
  same batch, one warm-up step excluded) -- it should not grow with the batch size;
* greedy decoding throughput (utterances/s and audio-s/s) for batch 1/4/8/16/32 on mixed-length clips of 1-20 s,
  batches formed in input order.

Printed as tables and drawn into a PNG (matplotlib). Clips are made by joining the shared TTS clips
(`perf.write_clips`). Sizes are flags; ``--size tiny`` proves the script in seconds.

    python benchmarks/growth_curves.py [--size real|tiny] [--batches 1,4,8,16] [--clip-seconds 2,5,10,20]
        [--decode-batches 1,4,8,16,32] [--decode-clips 32] [--max-new-tokens 16] [--steps 2] [--cached]
        [--png growth_curves.png]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from perf import peak_rss_gb, write_clips

from funasr_nano_hf import load_pretrained
from funasr_nano_hf.data.collator import FunAsrNanoCollator
from funasr_nano_hf.data.featurize import DataConfig, build_dataset
from funasr_nano_hf.inference import generate_ids
from funasr_nano_hf.testing.funasr_checkpoint import write_original_checkpoint
from funasr_nano_hf.training.arguments import ModelArguments
from funasr_nano_hf.training.frozen_cache import add_audio_embeddings
from funasr_nano_hf.training.model_setup import prepare_model_for_finetuning


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",")]


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",")]


def step_curves(folder: Path, scratch: Path, batches: list[int], lengths: list[float], steps: int, cached: bool):
    """{(batch, clip seconds): seconds per step per audio-second}."""
    model, processor = load_pretrained(folder)
    model = prepare_model_for_finetuning(model, ModelArguments(model_dir=str(folder), lora_dropout=0.0))
    collate = FunAsrNanoCollator(pad_token_id=processor.tokenizer.pad_token_id)
    trained = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=1e-4)
    results = {}
    for length in lengths:
        rows = write_clips(scratch / f"clips_{length:g}", [length] * max(batches))
        manifest = scratch / f"train_{length:g}.jsonl"
        manifest.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
        dataset, _ = build_dataset(
            [str(manifest)], processor, DataConfig(cache_dir=str(scratch / "cache")), precompute_features=True
        )
        if cached:
            dataset = add_audio_embeddings(dataset, model)
        for batch_size in batches:
            batch = collate(list(dataset.select(range(batch_size))))
            model.train()
            times = []
            for index in range(steps + 1):
                started = time.perf_counter()
                model(**batch).loss.backward()
                optimizer.step()
                optimizer.zero_grad()
                if index:  # the first is a warm-up
                    times.append(time.perf_counter() - started)
            results[(batch_size, length)] = float(np.mean(times)) / (batch_size * length)
            print(f"  step: batch {batch_size:3d} x {length:5.1f} s -> {results[(batch_size, length)]:.4f} s/audio-s")
    return results


def decode_curve(folder: Path, scratch: Path, batches: list[int], clips: int, max_new_tokens: int):
    """{batch: (utterances/s, audio-s/s)} on `clips` mixed-length clips of 1-20 s."""
    lengths = np.random.default_rng(0).uniform(1.0, 20.0, size=clips).round(1).tolist()
    rows = write_clips(scratch / "mixed", lengths)
    waveforms = [sf.read(r["wav"], dtype="float32")[0] for r in rows]
    audio = sum(len(w) for w in waveforms) / 16000
    model, processor = load_pretrained(folder)
    results = {}
    generate_ids(model, processor, waveforms[:1], max_new_tokens=2)  # warm-up
    for batch_size in batches:
        started = time.perf_counter()
        for start in range(0, len(waveforms), batch_size):
            generate_ids(model, processor, waveforms[start : start + batch_size], max_new_tokens=max_new_tokens)
        seconds = time.perf_counter() - started
        results[batch_size] = (len(waveforms) / seconds, audio / seconds)
        print(f"  decode: batch {batch_size:3d} -> {results[batch_size][0]:.2f} utt/s")
    return results, audio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=["real", "tiny"], default="real")
    parser.add_argument("--checkpoint", default=None, help="original-layout folder (default: build one of --size)")
    parser.add_argument("--batches", type=_ints, default=[1, 4, 8, 16])
    parser.add_argument("--clip-seconds", type=_floats, default=[2.0, 5.0, 10.0, 20.0])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--cached", action="store_true", help="train on cached frozen-audio embeddings")
    parser.add_argument("--decode-batches", type=_ints, default=[1, 4, 8, 16, 32])
    parser.add_argument("--decode-clips", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--png", default="growth_curves.png")
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        folder = (
            Path(args.checkpoint) if args.checkpoint else write_original_checkpoint(scratch / "ckpt", size=args.size)
        )
        steps = step_curves(folder, scratch, args.batches, args.clip_seconds, args.steps, args.cached)
        decode, audio = decode_curve(folder, scratch, args.decode_batches, args.decode_clips, args.max_new_tokens)
    print(
        f"\n{args.size} architecture, random weights, fp32, CPU, {torch.get_num_threads()} threads; LoRA step "
        f"{'(cached audio path)' if args.cached else '(uncached)'}: seconds per step per audio-second"
    )
    print(f"{'batch':>6s} " + " ".join(f"{f'{s:g} s':>9s}" for s in args.clip_seconds))
    for batch_size in args.batches:
        print(f"{batch_size:6d} " + " ".join(f"{steps[(batch_size, s)]:9.4f}" for s in args.clip_seconds))
    print(
        f"\ngreedy decode, {args.decode_clips} clips of 1-20 s ({audio:.1f} s audio), <= {args.max_new_tokens} tokens"
    )
    print(f"{'batch':>6s} {'utt/s':>8s} {'audio s/s':>10s}")
    for batch_size, (utt, aud) in decode.items():
        print(f"{batch_size:6d} {utt:8.2f} {aud:10.2f}")
    print(f"peak RSS of this process: {peak_rss_gb():.2f} GB")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for length in args.clip_seconds:
        left.plot(args.batches, [steps[(b, length)] for b in args.batches], marker="o", label=f"{length:g} s clips")
    left.set(xlabel="batch size", ylabel="s per step per audio-second", title="LoRA step cost", xscale="log")
    left.set_ylim(bottom=0)
    left.set_xticks(args.batches, [str(b) for b in args.batches])
    left.legend()
    right.plot(list(decode), [v[0] for v in decode.values()], marker="o")
    right.set(xlabel="batch size", ylabel="utterances / s", title="greedy decode (1-20 s clips)", xscale="log")
    right.set_xticks(list(decode), [str(b) for b in decode])
    for axis in (left, right):
        axis.minorticks_off()
    figure.suptitle(f"{args.size} architecture, fp32, CPU")
    figure.tight_layout()
    figure.savefig(args.png, dpi=120)
    print(f"wrote {args.png}")


if __name__ == "__main__":
    main()
