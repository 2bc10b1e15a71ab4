"""Shared fixtures: the test data folder and tiny checkpoints built by FunASR's own classes."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from helpers import fallback_shared_dir, shared_path


@pytest.fixture(scope="session")
def shared_dir(tmp_path_factory) -> Path:
    """`../shared` (or $FUNASR_NANO_HF_SHARED); without it, a folder of the same layout from the bundled clips."""
    path = shared_path()
    if (path / "data").is_dir():
        return path
    logging.getLogger(__name__).warning("no shared data at %s: using the bundled clips instead", path)
    return fallback_shared_dir(tmp_path_factory.mktemp("shared_fallback"))


@pytest.fixture(scope="session")
def sample_wav(shared_dir) -> Path:
    return shared_dir / "data" / "real" / "sample.wav"


@pytest.fixture(scope="session")
def tiny_original_dir(tmp_path_factory) -> Path:
    """A tiny Fun-ASR-Nano in the ORIGINAL layout, built and saved by FunASR's `FunASRNano`, with a
    stand-in CTC branch in model.pt (tensors the HF model has no place for)."""
    from funasr_nano_hf.testing.funasr_checkpoint import write_original_checkpoint

    generator = torch.Generator().manual_seed(1)
    extra = {
        "ctc_decoder.linear1.weight": torch.randn(64, 32, generator=generator),
        "ctc.ctc_lo.weight": torch.randn(100, 32, generator=generator),
        "ctc.ctc_lo.bias": torch.randn(100, generator=generator),
    }
    return write_original_checkpoint(tmp_path_factory.mktemp("tiny_original"), size="tiny", seed=0, extra_tensors=extra)


@pytest.fixture(scope="session")
def tiny_reference(tiny_original_dir):
    from funasr_nano_hf.testing.funasr_reference import FunASRReference

    return FunASRReference(tiny_original_dir)


@pytest.fixture(scope="session")
def tiny_model(tiny_original_dir):
    from funasr_nano_hf import load_pretrained

    return load_pretrained(tiny_original_dir)
