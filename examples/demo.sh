#!/usr/bin/env bash
# The main job on a fresh machine: cached venv, then LoRA fine-tune + CER before -> after (examples/demo.py).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh
exec python examples/demo.py "$@"
