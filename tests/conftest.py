"""Shared fixtures: the ../shared data folder and tiny checkpoints built by FunASR's own classes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def shared_path() -> Path:
    return Path(os.environ.get("FUNASR_NANO_HF_SHARED", REPO.parent / "shared"))


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    path = shared_path()
    if not (path / "data").is_dir():
        raise FileNotFoundError(f"shared test data not found at {path} (set FUNASR_NANO_HF_SHARED)")
    return path


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
