"""The one set of content checks for an example's audio and transcript, so that `check-data`, fine-tuning and
transcription name the same problems the same way: `check-data` (`data/checks.py`) runs `audio_problems` and
`transcript_problems` on every record; every audio file any caller reads goes through `audio.load_audio`,
which runs `check_decoded` (featurisation, transcription, evaluation alike); featurisation runs
`check_transcript` on the transcripts it tokenises.

Audio (on the decoded waveform and, for the file, its header):

* digital silence (every sample 0): error -- nothing to transcribe, the transcript cannot be learned from it;
* near-silence (RMS below `QualityLimits.quiet_dbfs`): warning;
* NaN / inf samples (float files): error -- the features would be NaN, the loss non-finite;
* truncated file (the header declares more frames than can be decoded: a cut download or copy): error;
* clipping (a share of samples at full scale, or float samples beyond it): warning.

Transcript (`transcript_problems`): text that holds a special token of the tokenizer or the audio placeholder
(anything of the form ``<|...|>``, and the tokenizer's added tokens): error. Tokenised as is it would become a
control token (``<|im_end|>`` ends the turn, the placeholder takes an audio embedding). The fine-tuning
tokenisation also escapes such text (`FunAsrNanoHfProcessor.build_training_example` tokenises the transcript
with ``split_special_tokens=True``), so it can never become a control token even when it reaches training.

Each check returns `(severity, reason)` pairs; the callers turn them into `readers.Problem`s with the
record's file:line. Hand-written: soundfile reports neither silence nor clipping, and clamps a truncated WAV's
frame count to the file size without a word; the RIFF / FLAC header is read here to see it.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from ..errors import AudioError

ERROR, WARNING = "error", "warning"
SPECIAL_TOKEN_RE = re.compile(r"<\|[^<>|\s]{1,64}\|>")  # Qwen's control-token form, <|im_end|>, <|AUDIO|>, ...


@dataclass(frozen=True)
class QualityLimits:
    """Where a clip stops being plausible speech; the defaults are deliberately far from real recordings."""

    quiet_dbfs: float = -60.0  # RMS below this (dB re full scale): near-silence
    clip_level: float = 0.999  # |sample| at or above this counts as clipped
    clip_share: float = 0.001  # clipped samples above this share of the clip: clipping


DEFAULT_LIMITS = QualityLimits()


def waveform_problems(waveform: np.ndarray, limits: QualityLimits = DEFAULT_LIMITS) -> list[tuple[str, str]]:
    """Content problems of a decoded waveform (any shape, samples in [-1, 1] at full scale)."""
    samples = np.asarray(waveform)
    if samples.size == 0:
        return [(ERROR, "zero-length audio")]
    finite = np.isfinite(samples)
    if not finite.all():
        bad = int((~finite).sum())
        return [(ERROR, f"{bad} NaN/inf sample(s) (first at sample {int(np.argmin(finite.reshape(-1)))})")]
    magnitude = np.abs(samples.astype(np.float64, copy=False))
    peak = float(magnitude.max())
    if peak == 0.0:
        return [(ERROR, "digital silence: every sample is 0")]
    problems = []
    rms = float(np.sqrt(np.mean(np.square(magnitude))))
    level = 20 * np.log10(rms)
    if level < limits.quiet_dbfs:
        problems.append((WARNING, f"near-silence: RMS {level:.1f} dBFS (below {limits.quiet_dbfs:g} dBFS)"))
    if peak > 1.0:
        problems.append((WARNING, f"samples beyond full scale (peak {peak:.3g}): clipped or mis-scaled float audio"))
    else:
        share = float(np.mean(magnitude >= limits.clip_level))
        if share > limits.clip_share:
            problems.append((WARNING, f"clipping: {100 * share:.2f}% of samples at full scale"))
    return problems


def declared_frames(path: str | Path) -> int | None:
    """Frames the file's header declares, for WAV (RIFF ``data`` chunk) and FLAC (STREAMINFO); None for other
    formats, for headers that leave it open (streamed WAV, FLAC with 0 = unknown) and for unparsable ones."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(12)
            if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
                block_align = None
                while True:
                    chunk = handle.read(8)
                    if len(chunk) < 8:
                        return None
                    name, size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
                    if name == b"fmt ":
                        fmt = handle.read(size + (size & 1))
                        block_align = struct.unpack("<H", fmt[12:14])[0]
                    elif name == b"data":
                        if not block_align or size in (0, 0xFFFFFFFF):
                            return None
                        return size // block_align
                    else:
                        handle.seek(size + (size & 1), 1)
            if head[:4] == b"fLaC":
                block = head[4:12] + handle.read(30)
                if block[0] & 0x7F != 0:  # the first metadata block must be STREAMINFO
                    return None
                info = block[4:38]
                total = int.from_bytes(info[13:18], "big") & ((1 << 36) - 1)
                return total or None
    except (OSError, struct.error, IndexError):
        return None
    return None


def truncation_problem(path: str | Path, decoded_frames: int) -> tuple[str, str] | None:
    """An error when the header of `path` declares more frames than the `decoded_frames` actually decoded."""
    declared = declared_frames(path)
    if declared is None or decoded_frames >= declared:
        return None
    return (
        ERROR,
        f"truncated file: its header declares {declared} frames, only {decoded_frames} can be decoded "
        f"({100 * decoded_frames / declared:.0f}%)",
    )


def audio_problems(path: str | Path, limits: QualityLimits = DEFAULT_LIMITS) -> list[tuple[str, str]]:
    """Every content problem of the audio file at `path` (decoded whole; unreadable files: one error)."""
    try:
        data, _ = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as err:
        return [(ERROR, f"unreadable or corrupt audio ({err})")]
    problems = []
    truncated = truncation_problem(path, data.shape[0])
    if truncated:
        problems.append(truncated)
    return problems + waveform_problems(data, limits)


def special_tokens_of(tokenizer) -> set[str]:
    """The tokenizer's special and added tokens (the text that tokenises into one control token)."""
    tokens = set(getattr(tokenizer, "all_special_tokens", []))
    tokens.update(str(token) for token in getattr(tokenizer, "added_tokens_decoder", {}).values())
    return tokens


def transcript_problems(text: str, special_tokens: Iterable[str] = ()) -> list[tuple[str, str]]:
    """An error naming the special tokens / audio placeholder found in a transcript (``<|...|>`` forms and
    `special_tokens`, e.g. `special_tokens_of(processor.tokenizer)` with the processor's `audio_token`)."""
    found = set(SPECIAL_TOKEN_RE.findall(text))
    found.update(token for token in special_tokens if token and token in text)
    if not found:
        return []
    return [
        (
            ERROR,
            f"transcript contains special token(s) {', '.join(sorted(found))}: as text they would become control "
            "tokens (end of turn, audio placeholder); remove them from the transcript",
        )
    ]


def check_decoded(path: str, data: np.ndarray, limits: QualityLimits = DEFAULT_LIMITS) -> tuple[str, ...]:
    """The audio checks for a file just decoded (`data`: its frames at the file's own rate, before resampling),
    as `audio.load_audio` runs them for every caller (featurisation, transcription, evaluation): `AudioError`
    naming the file and every error; the warnings are returned."""
    problems = [truncation_problem(path, len(data)), *waveform_problems(data, limits)]
    problems = [p for p in problems if p is not None]
    errors = [reason for severity, reason in problems if severity == ERROR]
    if errors:
        raise AudioError(path, "; ".join(errors))
    return tuple(reason for _, reason in problems)


def check_transcript(path: str, text: str, special_tokens: Iterable[str] = ()) -> None:
    """`AudioError` (naming the example's audio file, the featurisation's unit) when `transcript_problems`
    finds an error in `text`."""
    errors = [reason for severity, reason in transcript_problems(text, special_tokens) if severity == ERROR]
    if errors:
        raise AudioError(path, "; ".join(errors))


def drop_label(error: str) -> str:
    """The drop reason a featurisation report counts an example under, from its error text."""
    if "transcript contains special token" in error:
        return "special tokens in transcript"
    if any(word in error for word in ("digital silence", "NaN/inf", "truncated file")):
        return "bad audio content (silence, NaN/inf, truncated)"
    return "unreadable audio"
