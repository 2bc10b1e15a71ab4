"""`load_for_inference`: device names, FunASR's dtype names, accelerate's device_map."""

from __future__ import annotations

import pytest
import torch

from funasr_nano_hf.inference import load_for_inference, resolve_device, resolve_dtype, transcribe


def test_names():
    assert resolve_dtype("bf16") is torch.bfloat16 and resolve_dtype(None) is None
    with pytest.raises(ValueError, match="dtype must be one of"):
        resolve_dtype("int8")
    assert resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")


def test_device_map_auto_decodes_as_the_plain_model(tiny_original_dir, tiny_model, sample_wav):
    """accelerate's placement (here everything fits the one device) gives the same transcripts."""
    model, processor = load_for_inference(tiny_original_dir, device_map="auto")
    assert getattr(model, "hf_device_map", None)
    plain, _ = tiny_model
    assert transcribe(model, processor, str(sample_wav), max_new_tokens=6) == transcribe(
        plain, processor, str(sample_wav), max_new_tokens=6
    )
