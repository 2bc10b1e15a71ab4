#!/usr/bin/env python
"""LoRA training step at the REAL Fun-ASR-Nano-2512 architecture (random weights) on CPU, side by side in one
run: FunASR's own `FunASRNano` forward+backward+AdamW (its own LoRA, lora_finetune.sh freezing) vs ours
(peft LoRA, same targets/rank), uncached and with frozen-path caching. Batch: 4 clips of 3-4 s.

The cached variant frees the frozen audio path after caching (`release_frozen_audio_path`), as examples/finetune.py
does for a LoRA run without validation data. Each variant runs in its own subprocess; peak RSS per phase (Linux
VmHWM, reset between phases): the load, then the timed steps; the parent prints the table and ratios.
"a step" = forward + backward + optimizer step on the same batch; warm-up step excluded.

    python benchmarks/train_step.py [--size real|tiny] [--checkpoint DIR] [--steps 3] [--rounds 1] [--batch 4]
                                    [--clip-seconds S] [--full-logits] [--unfused-adamw] [--pinned-malloc] [--profile]

Ours also reports: achieved GFLOP/s (`perf.lora_step_flops`: counted from the model's shapes and the batch) against
an fp32 matmul peak measured in the same process, the ceiling of that ratio (`perf.matmul_ceiling`: the step's own
matrix products, at their shapes, timed alone), and peak RSS after loading and after the steps.
`--full-logits` computes lm_head at every position (the behaviour before the labelled-logits change), `--profile`
prints torch.profiler's top-10 ops of one step of ours.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "tts"
LORA = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}


def pick_clips(n: int = 4, clip_seconds: float | None = None, folder: Path | None = None) -> list[dict]:
    if clip_seconds is not None:
        from perf import write_clips

        return write_clips(folder, [clip_seconds] * n)
    rows = list(csv.DictReader(open(SHARED / "train_meta.tsv", encoding="utf-8"), delimiter="\t"))
    chosen = [r for r in rows if 3.0 <= float(r["duration_s"]) <= 4.0][:n]
    return [
        {"key": r["key"], "wav": str(SHARED / "wav" / "train" / f"{r['key']}.wav"), "txt": r["txt"]} for r in chosen
    ]


def _timed_steps(step, steps: int) -> list[float]:
    step()  # warm-up
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    return times


def _per_step(result: dict) -> float:
    """Mean seconds of a variant's timed steps."""
    return sum(result["times"]) / len(result["times"])


def run_funasr(checkpoint: str, clips: list[dict], steps: int) -> dict:
    import torch
    from perf import peak_rss_gb, start_peak_rss
    from torch.nn.utils.rnn import pad_sequence

    from funasr_nano_hf.models import prompting
    from funasr_nano_hf.testing.funasr_reference import FunASRReference

    ref = FunASRReference(checkpoint)
    load_rss = peak_rss_gb()  # FunASR's AutoModel: the model built, model.pt loaded into it
    model = ref.model
    model._apply_lora_to_llm({"lora_conf": LORA})
    for name, param in model.named_parameters():
        param.requires_grad = "lora_" in name
    model.llm.float()
    model.llm_dtype = "fp32"  # FunASR's forward autocasts the LLM to config's llm_dtype (bf16); compare in fp32
    extra = {k: v for k, v in ref.kwargs.items() if k not in ("tokenizer", "frontend")}
    items = []
    for clip in clips:
        contents = model.data_template(ref._messages(clip["wav"], prompting.instruction(), clip["txt"]))
        items.append(model.data_load_speech(contents, ref.tokenizer, ref.frontend, **{**extra, "device": "cpu"}))
    batch = {
        "speech": pad_sequence([i["speech"][0] for i in items], batch_first=True),
        "speech_lengths": torch.cat([i["speech_lengths"] for i in items]),
        "input_ids": pad_sequence([i["input_ids"][0] for i in items], batch_first=True, padding_value=-1),
        "attention_mask": pad_sequence([i["attention_mask"][0] for i in items], batch_first=True),
        "labels_ids": pad_sequence([i["labels_ids"] for i in items], batch_first=True, padding_value=-1),
        "fbank_beg": torch.cat([i["fbank_beg"] for i in items]),
        "fake_token_len": torch.cat([i["fake_token_len"] for i in items]),
    }
    fresh = lambda: {k: v.clone() for k, v in batch.items()}  # noqa: E731 (FunASR edits its inputs in place)
    model.eval()
    with torch.no_grad():
        loss0 = model(**fresh())[0].item()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model.train()
    start_peak_rss()  # the steps' own peak, not the loss check's

    def step():
        loss = model(**fresh())[0]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    return {"loss0": loss0, "times": _timed_steps(step, steps), "step_rss_gb": peak_rss_gb(), "load_rss_gb": load_rss}


def run_ours(
    checkpoint: str,
    clips: list[dict],
    steps: int,
    cached: bool,
    full_logits: bool = False,
    fused: bool = True,
    profile: bool = False,
    pin_malloc: bool = False,
) -> dict:
    import torch
    from perf import (
        lora_step_flops,
        matmul_ceiling,
        matmul_peak_gflops,
        peak_rss_gb,
        pin_mmap_threshold,
        start_peak_rss,
    )

    from funasr_nano_hf import load_pretrained
    from funasr_nano_hf.data.collator import FunAsrNanoCollator
    from funasr_nano_hf.data.featurize import DataConfig, build_dataset
    from funasr_nano_hf.training.arguments import ModelArguments
    from funasr_nano_hf.training.frozen_cache import add_audio_embeddings, release_frozen_audio_path
    from funasr_nano_hf.training.model_setup import prepare_model_for_finetuning

    if pin_malloc:
        pin_mmap_threshold()
    model, processor = load_pretrained(checkpoint)
    load_rss = peak_rss_gb()
    model.labelled_logits_only = not full_logits
    model = prepare_model_for_finetuning(
        model,
        ModelArguments(
            model_dir=checkpoint,
            lora_r=LORA["r"],
            lora_alpha=LORA["lora_alpha"],
            lora_dropout=0.0,
            lora_target_modules=",".join(LORA["target_modules"]),
        ),
    )
    with tempfile.TemporaryDirectory() as tmp:
        manifest = Path(tmp) / "batch.jsonl"
        manifest.write_text("\n".join(json.dumps(c, ensure_ascii=False) for c in clips) + "\n", encoding="utf-8")
        dataset, _ = build_dataset([str(manifest)], processor, DataConfig(cache_dir=tmp), precompute_features=True)
        cache_seconds = 0.0
        if cached:
            started = time.perf_counter()
            dataset = add_audio_embeddings(dataset, model)
            cache_seconds = time.perf_counter() - started
            release_frozen_audio_path(model)  # as examples/finetune.py does when nothing runs the audio path again
        batch = FunAsrNanoCollator(pad_token_id=processor.tokenizer.pad_token_id)(list(dataset))
    model.eval()
    with torch.no_grad():
        loss0 = model(**batch).loss.item()
    trained = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=1e-4, fused=fused or None)  # fused: as examples/finetune.py
    model.train()
    start_peak_rss()  # the steps' own peak, not the loss check's (full logits in eval mode)

    def step():
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    times = _timed_steps(step, steps)
    step_rss = peak_rss_gb()
    flops = lora_step_flops(model, batch, cached=cached, labelled_logits=not full_logits)
    result = {
        "loss0": loss0, "times": times, "cache_seconds": cache_seconds, "load_rss_gb": load_rss, "step_rss_gb": step_rss
    }  # fmt: skip
    result.update(gflop=flops / 1e9, peak_gflops=matmul_peak_gflops(), **matmul_ceiling(step))
    if profile:
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as profiler

        with profiler(activities=[ProfilerActivity.CPU]) as prof:
            step()
        result["profile"] = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=10)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=None, help="original-layout folder (default: build one, ~2 GB)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument(
        "--rounds", type=int, default=1, help="run the variants this many times, interleaved (the host's speed drifts)"
    )
    parser.add_argument("--variant", choices=["funasr", "ours", "ours_cached"], default=None)
    parser.add_argument("--size", choices=["real", "tiny"], default="real", help="architecture of the built checkpoint")
    parser.add_argument("--batch", type=int, default=4, help="clips per batch")
    parser.add_argument("--clip-seconds", type=float, default=None, help="clip length (default: shared 3-4 s clips)")
    parser.add_argument("--full-logits", action="store_true", help="lm_head at every position (the old behaviour)")
    parser.add_argument(
        "--unfused-adamw",
        action="store_true",
        help="ours with torch's per-tensor AdamW (finetune.py uses the fused one)",
    )
    parser.add_argument("--profile", action="store_true", help="torch.profiler top-10 ops of one step of ours")
    parser.add_argument(
        "--pinned-malloc", action="store_true", help="ours with glibc's mmap threshold pinned (less RSS, slower)"
    )
    parser.add_argument("--variants", default="funasr,ours,ours_cached", help="comma-separated subset to run")
    parser.add_argument("--clip-dir", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    scratch = tempfile.TemporaryDirectory()
    clip_dir = Path(args.clip_dir or scratch.name) / "clips"
    clips = pick_clips(args.batch, args.clip_seconds, clip_dir)
    if args.variant:
        if args.variant == "funasr":
            result = run_funasr(args.checkpoint, clips, args.steps)
        else:
            result = run_ours(
                args.checkpoint,
                clips,
                args.steps,
                cached=args.variant == "ours_cached",
                full_logits=args.full_logits,
                fused=not args.unfused_adamw,
                profile=args.profile,
                pin_malloc=args.pinned_malloc,
            )
        print("RESULT " + json.dumps(result))
        return

    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = args.checkpoint
        if checkpoint is None:
            from funasr_nano_hf.testing.funasr_checkpoint import write_original_checkpoint

            checkpoint = str(write_original_checkpoint(Path(tmp) / args.size, size=args.size, seed=0))
        import soundfile as sf

        audio = sum(sf.info(c["wav"]).duration for c in clips)
        results = {}
        flags = ["--batch", str(args.batch), "--clip-dir", str(clip_dir.parent)]
        flags += ["--clip-seconds", str(args.clip_seconds)] if args.clip_seconds is not None else []
        flags += [f for f, on in (("--full-logits", args.full_logits), ("--unfused-adamw", args.unfused_adamw)) if on]
        flags += ["--profile"] if args.profile else []
        flags += ["--pinned-malloc"] if args.pinned_malloc else []
        for _ in range(args.rounds):  # variants interleaved; per variant the round with the fastest mean step
            for variant in args.variants.split(","):
                out = subprocess.run(
                    [sys.executable, __file__, "--variant", variant, "--checkpoint", checkpoint]
                    + ["--steps", str(args.steps), *flags],
                    capture_output=True,
                    text=True,
                )
                line = next((row for row in out.stdout.splitlines() if row.startswith("RESULT ")), None)
                if line is None:
                    raise SystemExit(f"{variant} failed:\n{out.stderr[-3000:]}")
                result = json.loads(line[7:])
                if variant not in results or _per_step(result) < _per_step(results[variant]):
                    results[variant] = result
    print(
        f"{args.size} architecture, random weights, fp32, CPU; batch {len(clips)} clips, "
        f"{audio:.1f} s audio; LoRA r={LORA['r']} on {','.join(LORA['target_modules'])}; {args.steps} timed steps"
    )
    print(
        f"{'variant':14s} {'s/step':>8s} {'steps/s':>8s} {'audio s/s':>9s} {'load RSS GB':>11s} {'step RSS GB':>11s} "
        f"{'GFLOP':>8s} {'GFLOP/s':>8s} {'% peak':>7s} {'ceiling':>7s} {'loss@0':>10s}"
    )
    speed = {}
    for name, r in results.items():
        per_step = _per_step(r)
        speed[name] = 1 / per_step
        load = f"{r['load_rss_gb']:11.2f}" if r.get("load_rss_gb") is not None else f"{'-':>11s}"
        if "gflop" in r:
            achieved = r["gflop"] / per_step
            alone = r["matmul_gflop"] / r["matmul_alone_seconds"]  # the step's own products, timed alone
            compute = (
                f"{r['gflop']:8.2f} {achieved:8.1f} {100 * achieved / r['peak_gflops']:6.1f}% "
                f"{100 * alone / r['peak_gflops']:6.1f}%"
            )
        else:
            compute = f"{'-':>8s} {'-':>8s} {'-':>7s} {'-':>7s}"
        print(
            f"{name:14s} {per_step:8.2f} {1 / per_step:8.3f} {audio / per_step:9.2f} {load} {r['step_rss_gb']:11.2f} "
            f"{compute} {r['loss0']:10.5f}"
        )
    peaks = [r["peak_gflops"] for r in results.values() if "peak_gflops" in r]
    if peaks:
        print(f"fp32 matmul peak measured in the same run: {max(peaks):.1f} GFLOP/s (2048^3, best of 5)")
        print(
            "ceiling: the step's own matrix products (every aten::mm/addmm/bmm of one profiled step, at its shapes) "
            "timed alone, as % of that peak -- the most a step made of these products reaches on this machine"
        )
    for name, r in results.items():
        if "profile" in r:
            print(f"torch.profiler, one step of {name} (top 10 by self CPU time):\n{r['profile']}")
    if not {"funasr", "ours", "ours_cached"} <= speed.keys():
        return
    print(
        f"ratios (steps/s): ours/funasr {speed['ours'] / speed['funasr']:.2f}x, "
        f"ours_cached/funasr {speed['ours_cached'] / speed['funasr']:.2f}x, "
        f"ours_cached/ours {speed['ours_cached'] / speed['ours']:.2f}x"
    )
    print(
        f"loss before any update: |ours - funasr| = {abs(results['ours']['loss0'] - results['funasr']['loss0']):.2e}; "
        f"one-off cost of caching the batch's audio embeddings: {results['ours_cached']['cache_seconds']:.2f} s"
    )


if __name__ == "__main__":
    main()
