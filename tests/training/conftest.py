"""A small copy of the TTS test set (`shared_dir` fixture: 48 train / 6 valid clips) for the training runs."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import tts_subset


@pytest.fixture(scope="module")
def data_dir(shared_dir, tmp_path_factory) -> Path:
    return tts_subset(shared_dir, tmp_path_factory.mktemp("train_data"), train=48, valid=6)
