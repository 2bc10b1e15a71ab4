"""Audio reading with soundfile (torchaudio.load needs torchcodec), downmix to mono, resample to 16 kHz; lengths
from the header alone (`audio_header`), which training uses to batch and filter without decoding."""

from __future__ import annotations

import io
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


def _readable(path: str, data: bytes | None) -> str | io.BytesIO:
    """The file, or the encoded bytes (a `datasets` Audio column undecoded) named `path` in messages."""
    if data is not None:
        return io.BytesIO(data)
    if not os.path.isfile(path):
        raise AudioError(path, "missing audio file")
    return path


def load_audio(path: str, target_sr: int = 16000, data: bytes | None = None) -> tuple[np.ndarray, AudioInfo]:
    """(float32 mono waveform in [-1, 1] at `target_sr`, what was done to it); from `data` when given."""
    source = _readable(path, data)
    try:
        data, rate = sf.read(source, dtype="float32", always_2d=True)
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


def resampled_length(num_samples: int, original_sr: int, target_sr: int = 16000) -> int:
    """Samples `torchaudio.functional.resample` returns for `num_samples` at `original_sr`: ceil(n * target / orig)."""
    if original_sr == target_sr:
        return int(num_samples)
    return -(-int(num_samples) * int(target_sr) // int(original_sr))


def audio_header(path: str, target_sr: int = 16000, data: bytes | None = None) -> AudioInfo:
    """What `load_audio(path)` will return, from the file's header alone (no decoding): training batches and
    filters on it. A header can lie (e.g. a truncated file); the example's loader compares it with the audio."""
    source = _readable(path, data)
    try:
        # the open file's fields, not `sf.info` (which also formats descriptions and the log: a third slower)
        with sf.SoundFile(source) as info:
            frames, rate, channels = info.frames, info.samplerate, info.channels
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as err:
        raise AudioError(path, f"unreadable or corrupt audio ({err})") from err
    if frames <= 0:
        raise AudioError(path, "zero-length audio")
    samples = resampled_length(frames, rate, target_sr)
    return AudioInfo(rate, channels, samples, samples / target_sr, rate != target_sr, channels > 1)


def kaldi_frames(
    num_samples: int, sample_rate: int = 16000, frame_length_ms: float = 25.0, shift_ms: float = 10.0
) -> int:
    """fbank frames the feature extractor computes for `num_samples` (Kaldi, snip_edges, FunASR's window of
    min(25 ms, clip)); equals `fbank_frames` from 25 ms up, and is 1 for a shorter clip."""
    clip_ms = num_samples / sample_rate * 1000.0
    window = int(sample_rate * min(frame_length_ms, clip_ms) * 0.001)
    shift = int(sample_rate * shift_ms * 0.001)
    return 0 if num_samples < window or window == 0 else 1 + (num_samples - window) // shift


def fbank_frames(num_samples: int, sample_rate: int = 16000) -> int:
    """FunASR's `speech_length`: 25 ms / 10 ms fbank frames, `int((duration_ms - 25) // 10 + 1)`."""
    return int((num_samples * 1000 / sample_rate - 25) // 10 + 1)
