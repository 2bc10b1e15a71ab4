#!/usr/bin/env python
"""FunASR's fine-tuning guide, data conversion ("数据格式转换"):

    python scripts/convert_data_format.py --input data/train.jsonl --output data/train_converted.jsonl

{"key", "wav", "txt"} lines (or any manifest the package reads) -> {"key", "source", "target", "source_len",
"target_len"} lines, with the guide converter's units: `source_len` = duration in 10 ms units (floored),
`target_len` = characters of the transcript. `--no-calculate-lengths` leaves both out (faster; length filtering
and batching then compute them from the audio). Unreadable audio is reported and the line left out (the guide's
script writes source_len 100 for it). The same as `funasr-nano-hf convert-data --to source-target --lengths chars`.
"""

from __future__ import annotations

import argparse
import sys

from funasr_nano_hf.cli.main import main as cli_main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", required=True, help="manifest to convert")
    parser.add_argument("--output", required=True, help="source-target JSONL to write")
    parser.add_argument(
        "--no-calculate-lengths", dest="calculate_lengths", action="store_false", help="leave source_len/target_len out"
    )
    args = parser.parse_args(argv)
    forwarded = ["convert-data", "--input", args.input, "--output", args.output, "--to", "source-target"]
    forwarded += ["--lengths", "chars"] if args.calculate_lengths else ["--no-calculate-lengths"]
    return cli_main(forwarded)


if __name__ == "__main__":
    sys.exit(main())
