"""`funasr-nano-hf check-data`: read every manifest and audio file, report counts, hours, histograms and
every problem with file:line and reason; exit 1 when errors exist. The audio content and transcript checks
(silence, NaN/inf, truncation, clipping, special tokens) are `quality`'s, the same fine-tuning and
transcription run."""

from __future__ import annotations

import os
from collections.abc import Callable, Collection

import soundfile as sf

from . import quality
from .readers import Problem, read_manifests
from .report import DataReport

EXPECTED_SR = 16000


def check_manifests(
    paths: list[str],
    *,
    text_paths: list[str | None] | None = None,
    max_duration_s: float = 20.0,
    min_duration_s: float = 0.1,
    max_text_length: int = 200,
    text_length_fn: Callable[[str], int] = len,
    special_tokens: Collection[str] = (),
) -> DataReport:
    """Defaults follow FunASR's guide: max_source_length 2000 fbank frames (20 s), max_target_length 200."""
    result = read_manifests(paths, text_paths)
    report = DataReport(manifests=list(paths), problems=list(result.problems))
    report.read = len(result.records) + result.rejected
    for record in result.records:
        where = record.source
        if not os.path.isfile(record.audio):
            report.problems.append(Problem(where, "audio", f"missing audio file {record.audio}"))
            continue
        try:
            info = sf.info(record.audio)
        except (sf.LibsndfileError, RuntimeError) as err:
            report.problems.append(Problem(where, "audio", f"unreadable or corrupt audio {record.audio} ({err})"))
            continue
        if info.frames == 0:
            report.problems.append(Problem(where, "audio", f"zero-length audio {record.audio}"))
            continue
        duration = info.frames / info.samplerate
        audio = quality.audio_problems(record.audio)
        text = quality.transcript_problems(record.text, special_tokens)
        report.problems += [Problem(where, "audio", f"{reason} ({record.audio})", sev) for sev, reason in audio]
        report.problems += [Problem(where, "text", reason, sev) for sev, reason in text]
        ok = not any(severity == quality.ERROR for severity, _ in audio + text)
        if info.samplerate != EXPECTED_SR:
            report.problems.append(
                Problem(where, "audio", f"{info.samplerate} Hz: will be resampled to 16 kHz", "warning")
            )
        if info.channels > 1:
            report.problems.append(Problem(where, "audio", f"{info.channels} channels: will be downmixed", "warning"))
        if duration > max_duration_s:
            report.problems.append(Problem(where, "audio", f"{duration:.2f} s is longer than {max_duration_s} s"))
            ok = False
        if duration < min_duration_s:
            report.problems.append(Problem(where, "audio", f"{duration:.3f} s is shorter than {min_duration_s} s"))
            ok = False
        length = text_length_fn(record.text)
        if length > max_text_length:
            report.problems.append(Problem(where, "text", f"transcript length {length} exceeds {max_text_length}"))
            ok = False
        report.measure(duration, length)
        report.usable += ok
    return report
