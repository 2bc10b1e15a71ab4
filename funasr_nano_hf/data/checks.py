"""`funasr-nano-hf check-data`: read every manifest and audio header, report counts, hours, histograms and
every problem with file:line and reason; exit 1 when errors exist."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import soundfile as sf

from .readers import Problem, read_manifests

EXPECTED_SR = 16000


@dataclass
class DataReport:
    manifests: list[str]
    records: int = 0
    usable: int = 0
    total_seconds: float = 0.0
    durations: list[float] = field(default_factory=list)
    label_lengths: list[int] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    @property
    def has_errors(self) -> bool:
        return any(p.severity == "error" for p in self.problems)

    def to_dict(self) -> dict:
        return {
            "manifests": self.manifests,
            "records": self.records,
            "usable": self.usable,
            "hours": self.total_seconds / 3600,
            "errors": [str(p) for p in self.problems if p.severity == "error"],
            "warnings": [str(p) for p in self.problems if p.severity == "warning"],
        }

    def format(self) -> str:
        errors = sum(p.severity == "error" for p in self.problems)
        lines = [
            f"manifests: {', '.join(self.manifests)}",
            f"records: {self.records}  usable: {self.usable}  audio: {self.total_seconds / 3600:.3f} h "
            f"({self.total_seconds:.1f} s)  errors: {errors}  warnings: {len(self.problems) - errors}",
        ]
        lines += _histogram("duration (s)", self.durations)
        lines += _histogram("label length", self.label_lengths)
        lines += [f"  {p}" for p in self.problems]
        return "\n".join(lines)


def _histogram(title: str, values: list[float], bins: int = 8, width: int = 40) -> list[str]:
    if not values:
        return [f"{title}: (none)"]
    counts, edges = np.histogram(np.asarray(values, dtype=float), bins=bins)
    peak = max(int(counts.max()), 1)
    lines = [f"{title}: min {min(values):.2f}  mean {float(np.mean(values)):.2f}  max {max(values):.2f}"]
    for count, low, high in zip(counts, edges[:-1], edges[1:]):
        lines.append(f"  {low:8.2f} - {high:8.2f} | {'#' * round(width * int(count) / peak):<{width}} {int(count)}")
    return lines


def check_manifests(
    paths: list[str],
    *,
    text_paths: list[str | None] | None = None,
    max_duration_s: float = 20.0,
    min_duration_s: float = 0.1,
    max_text_length: int = 200,
    text_length_fn: Callable[[str], int] = len,
) -> DataReport:
    """Defaults follow FunASR's guide: max_source_length 2000 fbank frames (20 s), max_target_length 200."""
    result = read_manifests(paths, text_paths)
    report = DataReport(manifests=list(paths), problems=list(result.problems))
    report.records = len(result.records) + sum(p.severity == "error" for p in result.problems)
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
        ok = True
        if info.samplerate != EXPECTED_SR:
            report.problems.append(Problem(where, "audio", f"{info.samplerate} Hz: will be resampled to 16 kHz",
                                           "warning"))
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
        report.durations.append(duration)
        report.label_lengths.append(length)
        report.total_seconds += duration
        report.usable += ok
    return report
