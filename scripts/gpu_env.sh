# Source me: DeepSpeed's CPU accelerator (DS_ACCELERATOR=cpu) only where no GPU is visible. On a GPU node it would
# pick its CPU accelerator while the Trainer sends batches to cuda. A GPU that torch cannot use (CPU-only build,
# driver too old for its CUDA) is reported by examples/finetune.py with the remedy; an explicit DS_ACCELERATOR wins.
_funasr_nano_hf_gpu_visible() {
  case "${CUDA_VISIBLE_DEVICES-unset}" in "" | "-1") return 1 ;; esac
  compgen -G "/dev/nvidia[0-9]*" >/dev/null && return 0
  command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU'
}
if [ -z "${DS_ACCELERATOR:-}" ] && ! _funasr_nano_hf_gpu_visible; then
  export DS_ACCELERATOR=cpu
fi
unset -f _funasr_nano_hf_gpu_visible
