#!/usr/bin/env bash
# The common case of FunASR's guide (lora_finetune.sh) on the HF stack. Edit the variables or pass
# overrides, which win over the config file: bash examples/train.sh --max_epoch 20 --lr 2e-4 --batch_size 2
# Runs in the active virtualenv if there is one, else in the project's (scripts/venv.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${VIRTUAL_ENV:-}" ]; then
  source scripts/venv.sh
fi
source scripts/gpu_env.sh  # DS_ACCELERATOR=cpu only without a visible GPU (also in your own venv)

model_dir=${MODEL_DIR:-Fun-ASR-Nano-2512}           # original FunASR folder (or an HF folder)
train_data=${TRAIN_DATA:-data/train.jsonl}
valid_data=${VALID_DATA:-data/valid.jsonl}
output_dir=${OUTPUT_DIR:-outputs/lora}
num_processes=${NUM_PROCESSES:-1}                   # >1: one process per GPU (DDP)

launch=(python)
if [ "$num_processes" -gt 1 ]; then
  launch=(accelerate launch --multi_gpu --num_processes "$num_processes")
fi
exec "${launch[@]}" examples/finetune.py --config examples/configs/lora.yaml \
  --model_dir "$model_dir" --train_data "$train_data" --valid_data "$valid_data" --output_dir "$output_dir" "$@"
