"""The fault tests' data (8 train / 2 valid clips of the TTS test set, `shared_dir`) and their uninterrupted
reference run."""

from __future__ import annotations

from pathlib import Path

import pytest
from finetune_runs import finetune_cmd, run


@pytest.fixture(scope="session")
def fault_data(shared_dir, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("fault_data")
    tts = shared_dir / "data" / "tts"
    for name, count in (("train.jsonl", 8), ("valid.jsonl", 2)):
        (folder / name).write_text("".join((tts / name).read_text().splitlines(True)[:count]))
    (folder / "wav").symlink_to(tts / "wav")
    return folder


@pytest.fixture(scope="session")
def reference(tiny_original_dir, fault_data, tmp_path_factory) -> Path:
    """One uninterrupted run, shared by every test that compares against it."""
    out = tmp_path_factory.mktemp("reference") / "out"
    run(finetune_cmd(tiny_original_dir, fault_data, out))
    return out
