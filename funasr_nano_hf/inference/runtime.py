"""Loading a model for decoding: device, dtype, big-model placement, LoRA merged.

`load_for_inference` is what `funasr-nano-hf transcribe`, `examples/demo.py` and users call before `transcribe`:

* ``device``: ``cpu`` | ``cuda`` | ``cuda:N`` | ``mps`` | ``auto`` (the first of cuda, mps, cpu that is there);
* ``dtype``: the LLM's compute dtype (``fp32`` | ``bf16`` | ``fp16``, FunASR's names); the audio encoder and
  adaptor stay fp32 whatever it is, as in FunASR (the adaptor's activations overflow fp16);
* ``device_map="auto"``: accelerate spreads the model over the GPUs (and CPU) that are there, for models
  bigger than one device; the audio path is never split (`_no_split_modules`);
* ``adapter``: a LoRA adapter folder, merged into the weights (peft's ``merge_and_unload``, in fp32 on the
  freshly loaded copy, before the cast) so decoding runs at the base model's speed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``auto``/None -> cuda if available, else mps, else cpu; other names are checked to exist."""
    if device is None or str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available on this machine (use cpu or auto)")
    if resolved.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError(f"--device {device}: MPS is not available on this machine (use cpu or auto)")
    return resolved


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """FunASR's dtype names (``fp32``/``bf16``/``fp16``) or a torch dtype -> torch dtype; None stays None."""
    from ..models.configuration_funasr_nano import DTYPES

    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    return DTYPES[dtype]


def cast_llm(model: Any, dtype: torch.dtype) -> Any:
    """Cast the LLM (and lm_head) only; the audio encoder and adaptor stay fp32."""
    model.model.language_model.to(dtype)
    model.lm_head.to(dtype)
    return model


def load_for_inference(
    model_dir: str | Path,
    *,
    adapter: str | Path | None = None,
    device: str | torch.device | None = "auto",
    dtype: str | torch.dtype | None = None,
    device_map: str | dict | None = None,
) -> tuple[Any, Any]:
    """(model, processor) ready for `transcribe`: see the module docstring. ``dtype`` None keeps the folder's
    (fp32 for an original FunASR folder); ``device_map`` (e.g. ``"auto"``) replaces ``device``."""
    from ..conversion import load_pretrained

    llm_dtype = resolve_dtype(dtype)
    target = None if device_map is not None else resolve_device(device)
    # Load fp32 when an adapter is merged (merging into bf16 weights rounds twice); cast afterwards.
    model, processor = load_pretrained(model_dir, dtype=torch.float32 if adapter else llm_dtype)
    if adapter:
        from peft import PeftModel

        from ..conversion.loading import check_adapter

        check_adapter(adapter)  # safetensors preferred; .bin only with weights_only; hostile ones refused, named
        model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
        if llm_dtype is not None:
            cast_llm(model, llm_dtype)
    if device_map is not None:
        from accelerate import dispatch_model, infer_auto_device_map

        placement = device_map
        if isinstance(device_map, str):
            # the audio path is small and must stay whole; the LLM splits by decoder layer
            keep_whole = {type(model.model.audio_tower).__name__, type(model.model.multi_modal_projector).__name__}
            keep_whole |= set(getattr(model.model.language_model, "_no_split_modules", None) or [])
            placement = infer_auto_device_map(model, no_split_module_classes=sorted(keep_whole))
        model = dispatch_model(model, device_map=placement)
    else:
        model = model.to(target)
    return model.eval(), processor


__all__ = ["DEVICE_CHOICES", "cast_llm", "load_for_inference", "resolve_device", "resolve_dtype"]
