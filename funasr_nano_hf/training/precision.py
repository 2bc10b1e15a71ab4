"""Devices and mixed precision for fine-tuning: what FunASR computes, in the form HF users expect on GPUs.

* Device: a machine with NVIDIA GPUs that torch cannot use (a CPU-only torch build, or a CUDA runtime newer than the
  driver) stops with the remedy instead of silently training on CPU (`gpu_visibility_problem`, facts as arguments so
  it is testable anywhere; `check_training_device` gathers them).
* Precision (`apply_precision`): ``--llm_dtype`` is the dtype the LLM computes in, as FunASR means it (the LLM cast
  to it and autocast to it; the audio encoder and adaptor compute in fp32, outside autocast -- see
  `FunAsrNanoHfModel.get_audio_features`). Here the autocast is the Trainer's own mixed precision: ``llm_dtype bf16``
  turns on ``--bf16``, ``llm_dtype fp16`` turns on ``--fp16`` (always with a GradScaler); the trained parameters
  keep fp32 master weights (`upcast_trained_parameters`). ``auto`` (the default) is the checkpoint's own
  ``llm_dtype`` on CUDA (bf16 for Fun-ASR-Nano) and fp32 on CPU; TF32 matmuls are on for CUDA unless
  ``--tf32 false``. DeepSpeed fp16 is refused: it casts the whole model, the adaptor included, to fp16.
* GradScaler on CPU (`install_grad_scaler`): accelerate builds none for fp16 on CPU; torch's CPU GradScaler is
  installed so fp16 trains the same way on every device (and so the scaler path is testable without a GPU).

Hand-written because transformers/accelerate apply ``--bf16``/``--fp16`` to the whole model and keep trainable
half-precision weights as they are; the rest (autocast, GradScaler, loss scaling, unscaling) is theirs.
"""

from __future__ import annotations

import glob
import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..models.configuration_funasr_nano import DTYPES
from .funasr_options import OptionError

logger = logging.getLogger(__name__)

AUTO = "auto"  # --llm_dtype default: the checkpoint's own on CUDA, fp32 on CPU
LLM_DTYPES = (AUTO, *DTYPES)
HALF = {"bf16": "bf16", "fp16": "fp16"}  # llm_dtype -> the TrainingArguments flag (autocast) it needs

GPU_INSTALL_HINT = (
    "install a torch/torchaudio pair built for your driver, e.g. `TORCH_INDEX_URL="
    "https://download.pytorch.org/whl/cu126 source scripts/venv.sh` (README, 'On GPUs'), or pass --use_cpu true "
    "to train on CPU deliberately"
)


# ---------------------------------------------------------------------------------------------------------
# Device
# ---------------------------------------------------------------------------------------------------------
def gpu_visibility_problem(
    *,
    nvidia_gpus: int,
    torch_sees_gpu: bool,
    torch_version: str,
    torch_cuda: str | None,
    use_cpu: bool = False,
    cuda_visible_devices: str | None = None,
    driver: str | None = None,
    ds_accelerator: str | None = None,
) -> str | None:
    """Why this run would train on CPU on a GPU machine (None: nothing wrong). `nvidia_gpus`: NVIDIA device files
    (/dev/nvidia<N>); `torch_cuda`: ``torch.version.cuda`` (None for a CPU-only build); `driver`: the driver
    version when known; `ds_accelerator`: ``$DS_ACCELERATOR``."""
    if use_cpu or cuda_visible_devices in ("", "-1"):
        return None  # CPU asked for
    if torch_sees_gpu:
        if ds_accelerator == "cpu":
            return (
                "DS_ACCELERATOR=cpu while torch sees a GPU: DeepSpeed would use its CPU accelerator while the Trainer "
                "sends batches to cuda. Unset DS_ACCELERATOR (scripts/venv.sh sets it only on machines without GPU)"
            )
        return None
    if nvidia_gpus <= 0:
        return None  # a machine without NVIDIA GPUs: CPU is all there is
    if torch_cuda is None:
        why = f"torch {torch_version} is a CPU-only build"
    else:
        why = f"torch {torch_version} is built for CUDA {torch_cuda}" + (
            f", which driver {driver} does not support (a CUDA 13 build needs driver >= 580, CUDA 12.x >= 525)"
            if driver
            else ", and its CUDA runtime cannot start (driver too old for it, or no access to the devices)"
        )
    return f"this machine has {nvidia_gpus} NVIDIA GPU(s) but torch cannot use them: {why}. To train on them, " + (
        GPU_INSTALL_HINT
    )


def _driver_version() -> str | None:
    try:
        text = Path("/proc/driver/nvidia/version").read_text()
    except OSError:
        return None
    words = text.split()
    return next((w for w in words if w[:1].isdigit() and "." in w), None)


def check_training_device(use_cpu: bool) -> None:
    """Stop (`OptionError`) when this machine's GPUs are invisible to torch (`gpu_visibility_problem`)."""
    problem = gpu_visibility_problem(
        nvidia_gpus=len(glob.glob("/dev/nvidia[0-9]*")),
        torch_sees_gpu=torch.cuda.is_available(),
        torch_version=torch.__version__,
        torch_cuda=torch.version.cuda,
        use_cpu=use_cpu,
        cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"),
        driver=_driver_version(),
        ds_accelerator=os.environ.get("DS_ACCELERATOR"),
    )
    if problem:
        raise OptionError(problem)


# ---------------------------------------------------------------------------------------------------------
# Precision
# ---------------------------------------------------------------------------------------------------------
def checkpoint_llm_dtype(config: Any) -> str:
    """The dtype the checkpoint's LLM computes in (FunASR's ``llm_conf.llm_dtype``, recorded in the HF config)."""
    value = getattr(config, "llm_dtype", None)
    return value if value in DTYPES else "fp32"


def resolve_llm_dtype(requested: str, checkpoint: str, device_type: str) -> str:
    """``auto``: the checkpoint's `llm_dtype` on CUDA (FunASR's recipe), fp32 elsewhere (CPU half precision is
    slow, and the tests compare fp32 numbers). Anything else as given."""
    if requested not in LLM_DTYPES:
        raise OptionError(f"--llm_dtype {requested!r}: choose one of {', '.join(LLM_DTYPES)}")
    if requested != AUTO:
        return requested
    return checkpoint if device_type == "cuda" else "fp32"


def check_deepspeed_precision(training_args: Any) -> None:
    """DeepSpeed fp16 is refused (`OptionError`): it casts the whole model, the adaptor included, to fp16."""
    if not training_args.deepspeed:
        return
    config = getattr(training_args, "hf_deepspeed_config", None)
    if training_args.fp16 or (config is not None and config.is_true("fp16.enabled")):
        raise OptionError(
            "DeepSpeed fp16 (--fp16 / --llm_dtype fp16 / fp16.enabled in the DeepSpeed config) casts the whole model "
            "to fp16, the audio adaptor included, whose activations reach ~1e3 and overflow: use --llm_dtype bf16 "
            "(bf16 has fp32's range) with DeepSpeed, or fp16 without DeepSpeed (GradScaler, fp32 audio path)"
        )


def apply_precision(model_args: Any, training_args: Any, checkpoint: str) -> tuple[str, list[str]]:
    """Resolve ``--llm_dtype`` (`resolve_llm_dtype`) and set the Trainer's mixed precision to match it: bf16 ->
    ``--bf16`` (autocast), fp16 -> ``--fp16`` (autocast + GradScaler); a contradiction (``--llm_dtype bf16
    --fp16``) or DeepSpeed fp16 is an `OptionError`. TF32 on for CUDA unless ``--tf32`` was given. Call before
    the Trainer is built (it reads ``mixed_precision``). Returns
    (llm_dtype, notes on what was turned on) and sets ``model_args.llm_dtype``."""
    device_type = training_args.device.type
    llm_dtype = resolve_llm_dtype(model_args.llm_dtype, checkpoint, device_type)
    model_args.llm_dtype = llm_dtype
    notes = []
    if model_args.llm_dtype != "fp32":
        wanted, other = HALF[llm_dtype], "fp16" if llm_dtype == "bf16" else "bf16"
        if getattr(training_args, other):
            raise OptionError(
                f"--llm_dtype {llm_dtype} with --{other}: the LLM computes in one half precision; drop --{other} "
                f"(--llm_dtype {llm_dtype} turns on --{wanted})"
            )
        if not getattr(training_args, wanted):
            setattr(training_args, wanted, True)
            training_args.mixed_precision = wanted  # what TrainingArguments derives from the flag at init
            notes.append(
                f"--{wanted} on: --llm_dtype {llm_dtype} computes the LLM under {llm_dtype} autocast"
                + (" with a GradScaler" if llm_dtype == "fp16" else "")
                + " (audio encoder and adaptor in fp32)"
            )
    check_deepspeed_precision(training_args)
    if training_args.deepspeed and notes:
        from .arguments import refill_deepspeed_config

        refill_deepspeed_config(training_args)  # its "auto" bf16 follows the flag just turned on
    if device_type == "cuda" and training_args.tf32 is None:
        from transformers.utils.import_utils import enable_tf32

        enable_tf32(True)
        training_args.tf32 = True
        notes.append("TF32 matmuls on (CUDA; --tf32 false turns them off)")
    return llm_dtype, notes


def upcast_trained_parameters(model: nn.Module) -> list[str]:
    """Trainable half-precision parameters to fp32, in place (the `Parameter` objects stay, so ties and the peft
    wrappers hold): fp32 master weights, as mixed precision means. AdamW on pure fp16 weights underflows (its eps
    1e-8 is 0 in fp16: NaN after the first step, FunASR's ``llm_dtype fp16`` trap) and a GradScaler refuses fp16
    gradients; on bf16 weights small updates round away. Returns the names upcast."""
    names = []
    for name, param in model.named_parameters():
        if param.requires_grad and param.dtype in (torch.float16, torch.bfloat16):
            param.data = param.data.float()
            names.append(name)
    return names


def install_grad_scaler(accelerator: Any, **scaler_kwargs: Any) -> torch.amp.GradScaler | None:
    """fp16 mixed precision always with a GradScaler: accelerate builds one on accelerators but none on CPU (where it
    leaves fp16 off altogether); install torch's GradScaler for the accelerator's device and turn its autocast on.
    `scaler_kwargs` (e.g. ``init_scale``) replace accelerate's scaler too. Call before `Accelerator.prepare`.
    Returns the scaler in use (None without fp16 or under DeepSpeed, which scales itself)."""
    from accelerate.utils import DistributedType

    if accelerator.state.mixed_precision != "fp16" or accelerator.distributed_type == DistributedType.DEEPSPEED:
        return accelerator.scaler
    if accelerator.scaler is None or scaler_kwargs:
        accelerator.scaler = torch.amp.GradScaler(accelerator.device.type, **scaler_kwargs)
        accelerator.native_amp = True
    return accelerator.scaler
