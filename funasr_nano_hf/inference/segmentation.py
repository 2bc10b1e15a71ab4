"""Long audio: cut recordings longer than the model's comfortable span at pauses, never past its hard limit.

FunASR users pair Fun-ASR-Nano with a VAD model (``fsmn-vad``) for long recordings: the VAD cuts speech into
segments (at most ``max_single_segment_time``, 30 s in FunASR's Nano examples), the segments are decoded in
batches and the texts joined (`join_texts` = FunASR's ``_join_vad_texts``). Here the VAD is hand-written and
energy-based (no extra model, vectorised numpy over 10 ms blocks) because the package must run with the
checkpoint alone (given a FunASR ``fsmn-vad`` folder, ``SegmentationConfig(vad_model=...)``, FunASR's own VAD
finds the speech instead: `fsmn_vad`):

* block energies (dB) -> speech/non-speech with a threshold relative to the recording's own levels;
* pauses = non-speech runs of at least ``min_pause_s``; the recording is cut at the middle of each pause, so
  no audio is dropped except segments that hold no speech at all (reported as such, never transcribed);
* a segment still longer than ``max_segment_s`` is cut at its quietest 10 ms block in the second half of the
  allowed span, repeatedly, so no piece ever exceeds the span.

The hard limit is the audio encoder's sinusoidal position table (``audio_config.max_position_embeddings - 1``
LFR frames, positions counted from one; 6000 frames = 360 s for Fun-ASR-Nano-2512): `max_samples` turns it
into samples. A clip over it never reaches the model unsegmented (`check_length`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

BLOCK_S = 0.01  # the energy resolution: one fbank hop
SILENCE_DB = -70.0  # mean block power (dB re full scale) that is silence whatever the recording


@dataclass(frozen=True)
class SegmentationConfig:
    """How long recordings are cut. ``enabled=False`` decodes every clip whole (an error past the limit).

    max_segment_s: the comfortable span; longer clips are segmented, no piece is longer (FunASR's Nano examples
        use ``max_single_segment_time=30000`` ms for their VAD).
    min_pause_s: the shortest non-speech run that counts as a pause to cut at.
    pad_s: the silence kept before and after each segment's speech (the rest of the pause is not decoded).
    threshold_db: speech is louder than ``max(noise floor + 10 dB, loud level - threshold_db)`` (levels = the
        10th and 95th percentiles of the recording's block energies).
    vad_model: a FunASR ``fsmn-vad`` model folder: its speech intervals replace the energy pauses for clips
        longer than the span (`fsmn_vad`; needs the optional extra ``funasr``). Shorter clips stay whole.
    """

    enabled: bool = True
    max_segment_s: float = 30.0
    min_pause_s: float = 0.3
    threshold_db: float = 45.0
    pad_s: float = 0.1
    threshold_dbfs: float | None = None
    vad_model: str | None = None

    def __post_init__(self) -> None:
        if self.vad_model is not None:
            from .fsmn_vad import check_vad_folder

            object.__setattr__(self, "vad_model", str(check_vad_folder(self.vad_model)))
        if self.max_segment_s <= 1.0:
            raise ValueError(f"max_segment_s must be > 1 s, got {self.max_segment_s}")
        if self.min_pause_s <= 0:
            raise ValueError(f"min_pause_s must be > 0, got {self.min_pause_s}")


@dataclass(frozen=True)
class Segment:
    """A piece of a clip, in samples: ``waveform[start:end]``."""

    start: int
    end: int

    def seconds(self, sampling_rate: int) -> tuple[float, float]:
        return round(self.start / sampling_rate, 3), round(self.end / sampling_rate, 3)


def max_samples(model_config, feature_extractor) -> int:
    """The longest clip (samples) whose LFR frames fit the audio encoder's position table."""
    positions = int(model_config.audio_config.max_position_embeddings) - 1  # FunASR counts positions from 1
    hop = int(feature_extractor.sampling_rate * feature_extractor.frame_shift / 1000)
    window = int(feature_extractor.sampling_rate * feature_extractor.frame_length / 1000)
    fbank_frames = positions * int(feature_extractor.stride_lfr)  # ceil(T / stride) <= positions
    return window + (fbank_frames - 1) * hop


def check_length(num_samples: int, limit: int, sampling_rate: int, name: str) -> None:
    """Refuse a clip longer than the encoder's position table, naming it and the limit."""
    if num_samples > limit:
        raise ValueError(
            f"{name}: {num_samples / sampling_rate:.1f} s is longer than the model's limit of "
            f"{limit / sampling_rate:.1f} s (the audio encoder's position table); turn segmentation on "
            "(the default) or cut the recording"
        )


def block_energy_db(waveform: np.ndarray, sampling_rate: int) -> np.ndarray:
    """Mean power of each 10 ms block in dB (no temporary copy of the waveform: einsum sums the squares)."""
    hop = int(round(sampling_rate * BLOCK_S))
    count = max(1, math.ceil(len(waveform) / hop))
    padded = waveform if len(waveform) == count * hop else np.pad(waveform, (0, count * hop - len(waveform)))
    blocks = padded.reshape(count, hop).astype(np.float32, copy=False)
    power = np.einsum("ij,ij->i", blocks, blocks) / hop
    return 10.0 * np.log10(power + 1e-12)


def _runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start and end (exclusive) indices of the True runs of a 1-D boolean mask."""
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)


def split_at_quiet(energy: np.ndarray, start: int, end: int, span: int) -> list[tuple[int, int]]:
    """Cut [start, end) (blocks) into pieces <= span at the quietest block of each piece's second half."""
    pieces = []
    while end - start > span:
        low = start + span // 2
        cut = low + int(np.argmin(energy[low : start + span]))
        pieces.append((start, cut))
        start = cut
    pieces.append((start, end))
    return pieces


def segment_waveform(
    waveform: np.ndarray, sampling_rate: int, config: SegmentationConfig, limit_samples: int | None = None
) -> list[Segment]:
    """The pieces `waveform` is decoded in: itself when it fits the span; else speech cut at pauses (see module
    docstring), or FunASR's fsmn-vad intervals when ``config.vad_model`` is set. Every piece is at most
    ``min(max_segment_s, limit)`` long; an all-silent clip gives []."""
    span_samples = int(config.max_segment_s * sampling_rate)
    if limit_samples is not None:
        span_samples = min(span_samples, limit_samples)
    if len(waveform) <= span_samples:
        return [Segment(0, len(waveform))]
    if config.vad_model is not None:
        from .fsmn_vad import vad_segments

        return vad_segments(waveform, sampling_rate, config.vad_model, span_samples)
    hop = int(round(sampling_rate * BLOCK_S))
    energy = block_energy_db(waveform, sampling_rate)
    floor, loud = np.percentile(energy, [10, 95])
    # relative to the recording's levels; below loud - 6 dB even with no pause at all; never below SILENCE_DB
    threshold = max(min(max(floor + 10.0, loud - config.threshold_db), loud - 6.0), SILENCE_DB)
    threshold = threshold if config.threshold_dbfs is None else config.threshold_dbfs
    speech = energy > threshold
    starts, ends = _runs(~speech)
    long_pause = (ends - starts) >= int(round(config.min_pause_s / BLOCK_S))
    cuts = np.unique(np.concatenate([[0], (starts[long_pause] + ends[long_pause]) // 2, [len(energy)]]))
    has_speech = np.add.reduceat(speech.astype(np.int64), cuts[:-1]) > 0
    span_blocks = span_samples // hop
    pad = int(round(config.pad_s / BLOCK_S))
    segments = []
    for first, last in zip(cuts[:-1][has_speech], cuts[1:][has_speech]):
        # keep `pad_s` of the pause on each side of the speech, not the whole half-pause
        voiced = np.flatnonzero(speech[first:last])
        first, last = max(int(first), first + voiced[0] - pad), min(int(last), first + voiced[-1] + 1 + pad)
        for a, b in split_at_quiet(energy, int(first), int(last), span_blocks):
            segments.append(Segment(a * hop, min(b * hop, len(waveform))))
    return segments


_RICH_TAG = re.compile(r"<\|[^|]*\|>")


def join_texts(texts: Sequence[str]) -> str:
    """FunASR's ``_join_vad_texts``: strip, drop empty pieces, a space between pieces unless both sides are CJK."""
    cleaned = [text for text in (_RICH_TAG.sub("", t).strip() for t in texts) if text]
    if not cleaned:
        return ""
    joined = cleaned[0]
    for text in cleaned[1:]:
        cjk = "\u3400" <= joined[-1] <= "\u9fff" and "\u3400" <= text[0] <= "\u9fff"
        joined += ("" if cjk else " ") + text
    return joined


__all__ = ["Segment", "SegmentationConfig", "block_energy_db", "check_length", "join_texts", "max_samples"]
