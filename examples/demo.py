#!/usr/bin/env python
"""The README's main job: LoRA fine-tune + CER before -> after on a held-out set, CPU, minutes.

    python examples/demo.py [--model_dir DIR] [--train_data M] [--valid_data M] [--output_dir outputs/demo]
                            [--device auto|cpu|cuda|mps] [--dtype fp32|bf16|fp16]

Default: the bundled small Fun-ASR-Nano (`examples/bundled/model`, ORIGINAL FunASR layout, pretrained by
`examples/bundled/pretrain.py` on synthetic "home assistant" speech) is adapted to a new domain and new
voices ("travel desk", `examples/bundled/data/`). With `--model_dir` pointing at a real Fun-ASR-Nano-2512
folder and your own manifests, the same command is the real recipe.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BUNDLED = HERE / "bundled"
sys.path.insert(0, str(HERE))


def cer_on(model, processor, manifest: Path, batch_size: int = 16) -> tuple[float, list[tuple[str, str]]]:
    """CER of `model` on a manifest in any supported format, and the (reference, prediction) pairs."""
    from funasr_nano_hf import transcribe
    from funasr_nano_hf.data.readers import read_manifest
    from funasr_nano_hf.evaluation import compute_cer

    result = read_manifest(manifest)
    for problem in result.problems:
        print(problem, file=sys.stderr)
    references = [record.text for record in result.records]
    predictions = transcribe(model, processor, [record.audio for record in result.records], batch_size=batch_size)
    return compute_cer(predictions, references)["cer"], list(zip(references, predictions))


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_dir", default=str(BUNDLED / "model"))
    parser.add_argument("--train_data", default=str(BUNDLED / "data" / "train.jsonl"))
    parser.add_argument("--valid_data", default=str(BUNDLED / "data" / "heldout.jsonl"))
    parser.add_argument("--output_dir", default="outputs/demo")
    parser.add_argument("--max_epoch", type=int, default=15)
    parser.add_argument(
        "--lr",
        type=float,
        default=None,
        help="default 3e-3 for the bundled small model, 1e-4 (FunASR's guide) for any other model",
    )
    parser.add_argument("--examples", type=int, default=4, help="held-out transcripts to print before/after")
    parser.add_argument("--device", default="auto", help="decoding device: auto | cpu | cuda | cuda:N | mps")
    parser.add_argument(
        "--dtype", choices=["fp32", "bf16", "fp16"], default=None, help="decoding dtype of the LLM (default: fp32)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    import torch

    from funasr_nano_hf.evaluation import NORMALIZER_NAME
    from funasr_nano_hf.inference import load_for_inference

    out, valid = Path(args.output_dir), Path(args.valid_data)
    bundled = Path(args.model_dir).resolve() == (BUNDLED / "model").resolve()
    if args.lr is None:
        args.lr = 3e-3 if bundled else 1e-4
    started = time.perf_counter()
    model, processor = load_for_inference(args.model_dir, device=args.device, dtype=args.dtype)
    own_domain = BUNDLED / "data" / "pretrain_domain.jsonl"
    if bundled and own_domain.is_file():
        print(
            f"[demo] bundled model on its pretraining domain (unseen sentences): CER "
            f"{cer_on(model, processor, own_domain)[0]:.4f}"
        )
    before, pairs_before = cer_on(model, processor, valid)
    print(f"[demo] {args.model_dir}: CER before fine-tuning {before:.4f} on {valid} ({NORMALIZER_NAME})")

    import finetune

    # The held-out set is only measured, never used to pick a checkpoint: the adapter is the last step's.
    finetune.main(
        [
            "--model_dir",
            args.model_dir,
            "--train_data",
            args.train_data,
            "--output_dir",
            str(out / "lora"),
            "--overwrite_output_dir",  # the demo always trains afresh: a re-run replaces its previous run
            "true",
            "--max_epoch",
            str(args.max_epoch),
            "--per_device_train_batch_size",
            "16",
            "--lr",
            str(args.lr),
            "--warmup_steps",
            "20",
            "--lora_r",
            "16",
            "--lora_alpha",
            "32",
            "--lora_dropout",
            "0.05",
            "--lora_target_modules",
            "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj",
            "--log_interval",
            "10",
            "--save_checkpoint_interval",
            "100",
            "--dataloader_num_workers",
            "0",
            *([] if torch.cuda.is_available() else ["--use_cpu"]),
        ]
    )
    # the adapter merged into the weights (decoding at the base model's speed), on the same device/dtype
    del model
    tuned, processor = load_for_inference(
        args.model_dir, adapter=out / "lora" / "final", device=args.device, dtype=args.dtype
    )
    after, pairs_after = cer_on(tuned, processor, valid)
    for (reference, old), (_, new) in list(zip(pairs_before, pairs_after))[: args.examples]:
        print(f"[demo]   ref {reference!r}\n[demo]     before {old!r}\n[demo]     after  {new!r}")
    print(
        f"[demo] CER on {valid.name} ({NORMALIZER_NAME}): before {before:.4f} -> after {after:.4f} "
        f"({time.perf_counter() - started:.0f} s in all)"
    )
    return {"cer_before": before, "cer_after": after}


if __name__ == "__main__":
    main()
