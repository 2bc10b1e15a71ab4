"""A folder of deliberately broken inputs, with real audio written by soundfile."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio


@pytest.fixture(scope="module")
def broken_dir(shared_dir, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("broken")
    wav, rate = sf.read(str(shared_dir / "data" / "tts" / "wav" / "valid" / "tts_valid_0001_zh.wav"), dtype="float32")
    sf.write(folder / "good.wav", wav, rate)
    for target in (8000, 44100, 48000):
        resampled = torchaudio.functional.resample(torch.from_numpy(wav), rate, target).numpy()
        sf.write(folder / f"sr{target}.wav", resampled, target)
    sf.write(folder / "stereo.wav", np.stack([wav, wav * 0.5], axis=1), rate)
    sf.write(folder / "empty.wav", np.zeros(0, dtype=np.float32), rate)
    (folder / "corrupt.wav").write_bytes(np.random.default_rng(0).bytes(2000))
    sf.write(folder / "long.wav", np.tile(wav, 20), rate)
    rows = [
        {"key": "good", "wav": "good.wav", "txt": "号码是八四零四五"},  # line 1
        {"key": "missing", "wav": "nowhere.wav", "txt": "不存在"},  # line 2
        {"key": "corrupt", "wav": "corrupt.wav", "txt": "坏文件"},  # line 3
        {"key": "empty_audio", "wav": "empty.wav", "txt": "空的"},  # line 4
        {"key": "sr8k", "wav": "sr8000.wav", "txt": "八千"},  # line 5
        {"key": "sr44k", "wav": "sr44100.wav", "txt": "四万四"},  # line 6
        {"key": "sr48k", "wav": "sr48000.wav", "txt": "四万八"},  # line 7
        {"key": "stereo", "wav": "stereo.wav", "txt": "立体声"},  # line 8
        {"key": "blank", "wav": "good.wav", "txt": "   "},  # line 9
        None,  # line 10: malformed
        {"key": "nofield", "wav": "good.wav"},  # line 11: missing txt
        {"key": "good", "wav": "good.wav", "txt": "重复"},  # line 12: duplicate key
        {"key": "long", "wav": "long.wav", "txt": "很长"},  # line 13
        {"key": "longtext", "wav": "good.wav", "txt": "长" * 300},  # line 14
        "BADBYTES",  # line 15: not UTF-8
    ]
    lines = []
    for row in rows:
        if row is None:
            lines.append(b'{"key": "bad", "wav": "good.wav", "txt": ')
        elif row == "BADBYTES":
            lines.append(b'{"key": "latin1", "wav": "good.wav", "txt": "caf\xe9"}')
        else:
            lines.append(json.dumps(row, ensure_ascii=False).encode("utf-8"))
    (folder / "broken.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    (folder / "unknown.jsonl").write_text(json.dumps({"path": "good.wav", "sentence": "x"}) + "\n")
    return folder
