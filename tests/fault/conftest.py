"""The fault tests' data (8 train / 2 valid clips of the TTS test set, `shared_dir`) and their uninterrupted
reference run."""

from __future__ import annotations

from pathlib import Path

import pytest
from finetune_runs import finetune_cmd, run
from helpers import tts_subset


@pytest.fixture(scope="session")
def fault_data(shared_dir, tmp_path_factory) -> Path:
    return tts_subset(shared_dir, tmp_path_factory.mktemp("fault_data"), train=8, valid=2)


@pytest.fixture(scope="session")
def reference(tiny_original_dir, fault_data, tmp_path_factory) -> Path:
    """One uninterrupted run, shared by every test that compares against it."""
    out = tmp_path_factory.mktemp("reference") / "out"
    run(finetune_cmd(tiny_original_dir, fault_data, out))
    return out
