#!/usr/bin/env bash
# FunASR's fine-tuning guide, method 1 ("方法1: 使用Shell脚本"):  bash scripts/train.sh
# Edit the variables below, or set them in the environment, to change the model or data paths. The training
# settings are the guide's, in CONFIG_FILE (FunASR's nested layout; edit it to customise). Arguments after the
# script are passed on and win over the file: ++train_conf.max_epoch=20, --max_epoch 20, ...
# train.log, config.yaml and the checkpoints are written to OUTPUT_DIR by the run itself.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

MODEL_DIR=${MODEL_DIR:-models/Fun-ASR-Nano-2512}
TRAIN_DATA=${TRAIN_DATA:-data/train.jsonl}
VALID_DATA=${VALID_DATA-data/valid.jsonl}      # leave empty ("") if there is no validation data
OUTPUT_DIR=${OUTPUT_DIR:-exp/funasr_nano_finetune}
CONFIG_FILE=${CONFIG_FILE:-$ROOT/examples/conf/train_funasr_nano.yaml}
NUM_PROCESSES=${NUM_PROCESSES:-1}              # >1: one process per GPU (DDP)
PYTHON=${PYTHON:-python}
# DS_ACCELERATOR=cpu only without a visible GPU
# shellcheck source=scripts/gpu_env.sh
source "$ROOT/scripts/gpu_env.sh"

# Data conversion (optional), {"key","wav","txt"} -> {"source","target","source_len","target_len"}:
# "$PYTHON" "$ROOT/scripts/convert_data_format.py" --input data/train_raw.jsonl --output "$TRAIN_DATA"

valid=()
if [ -n "$VALID_DATA" ]; then
  valid=(++valid_data_set_list="$VALID_DATA")
fi
launch=("$PYTHON")
if [ "$NUM_PROCESSES" -gt 1 ]; then
  launch=(accelerate launch --multi_gpu --num_processes "$NUM_PROCESSES")
fi
exec "${launch[@]}" "$ROOT/examples/finetune.py" --config "$CONFIG_FILE" \
  ++model="$MODEL_DIR" \
  ++train_data_set_list="$TRAIN_DATA" \
  "${valid[@]}" \
  ++output_dir="$OUTPUT_DIR" \
  "$@"
