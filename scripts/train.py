#!/usr/bin/env python
"""FunASR's fine-tuning guide, method 2 ("方法2: 使用Python脚本"), on examples/finetune.py:

    python scripts/train.py --model_dir models/Fun-ASR-Nano-2512 --train_data data/train.jsonl \\
        --valid_data data/valid.jsonl --output_dir exp/funasr_nano_finetune \\
        --batch_size 4 --max_epoch 10 --learning_rate 0.0001

The guide script's options, with its defaults; the other settings come from `--config_file` (the guide's,
examples/conf/train_funasr_nano.yaml). Any further examples/finetune.py option may follow (`--name value` or
`++section.key=value`). Without `--valid_data`, data/valid.jsonl is used when it exists, else the run has no
validation (warned). train.log, config.yaml and the checkpoints are written to `--output_dir` by the run.
"""

from __future__ import annotations

import argparse
import logging
import runpy
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FINETUNE = ROOT / "examples" / "finetune.py"
DEFAULT_VALID = "data/valid.jsonl"

logger = logging.getLogger("train")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    def _get_help_string(self, action: argparse.Action) -> str | None:
        return action.help if action.default is None else super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=_HelpFormatter, epilog="Other options: python examples/finetune.py --help"
    )
    parser.add_argument("--model_dir", default="models/Fun-ASR-Nano-2512", help="the model folder")
    parser.add_argument("--train_data", default="data/train.jsonl", help="training manifest")
    parser.add_argument(
        "--valid_data", default=None, help=f"validation manifest (optional; {DEFAULT_VALID} if present)"
    )
    parser.add_argument("--output_dir", default="exp/funasr_nano_finetune", help="where the run writes")
    parser.add_argument(
        "--config_file", default=str(ROOT / "examples" / "conf" / "train_funasr_nano.yaml"), help="training settings"
    )
    for name, kind, guide in (("batch_size", int, 4), ("max_epoch", int, 10), ("learning_rate", float, 0.0001)):
        parser.add_argument(
            f"--{name}", type=kind, default=None, help=f"(default: --config_file's; {guide} in the shipped one)"
        )
    return parser


def finetune_argv(argv: list[str] | None = None) -> list[str]:
    """examples/finetune.py's arguments for this script's command line."""
    args, extra = build_parser().parse_known_args(argv)
    valid = args.valid_data
    if valid is None:
        if Path(DEFAULT_VALID).is_file():
            valid = DEFAULT_VALID
        else:
            logger.warning("no --valid_data and no %s: training without validation", DEFAULT_VALID)
    forwarded = ["--config", args.config_file, "--model_dir", args.model_dir, "--train_data", args.train_data]
    forwarded += ["--output_dir", args.output_dir]
    if valid:
        forwarded += ["--valid_data", valid]
    for name in ("batch_size", "max_epoch", "learning_rate"):
        if getattr(args, name) is not None:
            forwarded += [f"--{name}", str(getattr(args, name))]
    return forwarded + extra


def main(argv: list[str] | None = None) -> dict[str, float]:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    finetune = runpy.run_path(str(FINETUNE), run_name="funasr_nano_hf_finetune")
    return finetune["main"](finetune_argv(argv))


if __name__ == "__main__":
    main(sys.argv[1:])
