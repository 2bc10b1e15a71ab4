"""A small copy of the TTS test set (`shared_dir` fixture: 48 train / 6 valid clips) for the training runs."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def data_dir(shared_dir, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("train_data")
    tts = shared_dir / "data" / "tts"
    (folder / "train.jsonl").write_text("".join(tts.joinpath("train.jsonl").read_text().splitlines(True)[:48]))
    (folder / "valid.jsonl").write_text("".join(tts.joinpath("valid.jsonl").read_text().splitlines(True)[:6]))
    (folder / "wav").symlink_to(tts / "wav")
    return folder
