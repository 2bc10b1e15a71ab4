"""Audio reading with soundfile (torchaudio.load needs torchcodec), downmix to mono, resample to 16 kHz."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import soundfile as sf
import torch
import torchaudio

from ..errors import AudioError
from .quality import check_decoded


@dataclass(frozen=True)
class AudioInfo:
    original_sr: int
    channels: int
    num_samples: int  # after resampling
    duration_s: float
    resampled: bool
    downmixed: bool
    warnings: tuple[str, ...] = ()  # `quality.check_decoded`'s (near-silence, clipping)


def load_audio(path: str, target_sr: int = 16000) -> tuple[np.ndarray, AudioInfo]:
    """(float32 mono waveform in [-1, 1] at `target_sr`, what was done to it)."""
    if not os.path.isfile(path):
        raise AudioError(path, "missing audio file")
    try:
        data, rate = sf.read(path, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as err:
        raise AudioError(path, f"unreadable or corrupt audio ({err})") from err
    if data.shape[0] == 0:
        raise AudioError(path, "zero-length audio")
    warnings = check_decoded(path, data)  # silence, NaN/inf, truncated file: AudioError; clipping etc.: warnings
    channels = data.shape[1]
    mono = data.mean(axis=1) if channels > 1 else data[:, 0]
    if rate != target_sr:
        mono = torchaudio.functional.resample(torch.from_numpy(np.ascontiguousarray(mono)), rate, target_sr).numpy()
    mono = np.ascontiguousarray(mono, dtype=np.float32)
    info = AudioInfo(rate, channels, len(mono), len(mono) / target_sr, rate != target_sr, channels > 1, warnings)
    return mono, info


def fbank_frames(num_samples: int, sample_rate: int = 16000) -> int:
    """FunASR's `speech_length`: 25 ms / 10 ms fbank frames, `int((duration_ms - 25) // 10 + 1)`."""
    return int((num_samples * 1000 / sample_rate - 25) // 10 + 1)
