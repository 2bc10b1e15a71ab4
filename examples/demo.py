#!/usr/bin/env python
"""The README's main job: LoRA fine-tune + CER before -> after on a held-out set, CPU, minutes.

    python examples/demo.py [--model_dir DIR] [--output_dir outputs/demo] [--max_epoch N]

`--model_dir` takes an original FunASR folder (a real Fun-ASR-Nano-2512 download runs the real recipe) or
an HF folder. Without it, the demo uses the bundled default: `examples/bundled/model` when present, else a
tiny Fun-ASR-Nano built with FunASR's own classes and random weights (which shows the pipeline, not
accuracy: its CER starts near 100%).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def cer_on(model, processor, manifest: Path, max_new_tokens: int = 24) -> float:
    from funasr_nano_hf import transcribe
    from funasr_nano_hf.evaluation import compute_cer

    rows = [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines() if line.strip()]
    paths = [str(manifest.parent / row["wav"]) for row in rows]
    predictions = transcribe(model, processor, paths, batch_size=8, max_new_tokens=max_new_tokens)
    return compute_cer(predictions, [row["txt"] for row in rows])["cer"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_dir", default=None)
    parser.add_argument("--output_dir", default="outputs/demo")
    parser.add_argument("--train_data", default=str(HERE / "data" / "train.jsonl"))
    parser.add_argument("--valid_data", default=str(HERE / "data" / "valid.jsonl"))
    parser.add_argument("--max_epoch", type=int, default=4)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from peft import PeftModel

    from funasr_nano_hf import load_pretrained
    from funasr_nano_hf.evaluation import NORMALIZER_NAME

    out = Path(args.output_dir)
    model_dir = args.model_dir
    if model_dir is None:
        bundled = HERE / "bundled" / "model"
        if (bundled / "model.pt").is_file():
            model_dir = str(bundled)
        else:
            from funasr_nano_hf.conversion.funasr_checkpoint import write_original_checkpoint

            model_dir = str(out / "base")
            if not (Path(model_dir) / "model.pt").is_file():
                print(f"[demo] no bundled model: building a tiny random Fun-ASR-Nano with FunASR's classes in {model_dir}")
                write_original_checkpoint(model_dir, size="tiny", seed=0)

    valid = Path(args.valid_data)
    model, processor = load_pretrained(model_dir)
    before = cer_on(model, processor, valid)
    print(f"[demo] CER before fine-tuning: {before:.4f} ({NORMALIZER_NAME})")

    import finetune

    finetune.main([
        "--model_dir", model_dir, "--train_data", args.train_data, "--valid_data", args.valid_data,
        "--output_dir", str(out / "lora"), "--max_epoch", str(args.max_epoch),
        "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "16",
        "--lr", "5e-3", "--warmup_steps", "5", "--lora_r", "16", "--lora_alpha", "32",
        "--log_interval", "4", "--validate_interval", "12", "--save_checkpoint_interval", "12",
        "--eval_max_new_tokens", "24", "--use_cpu", "--dataloader_num_workers", "0",
    ])
    base, processor = load_pretrained(model_dir)
    tuned = PeftModel.from_pretrained(base, str(out / "lora" / "final")).eval()
    after = cer_on(tuned, processor, valid)
    print(f"[demo] CER on {valid.name} ({NORMALIZER_NAME}): before {before:.4f} -> after {after:.4f}")


if __name__ == "__main__":
    main()
