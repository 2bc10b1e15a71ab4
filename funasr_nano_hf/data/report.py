"""`DataReport`: what happened to every input record, for `check-data` and for featurization alike."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .readers import Problem


@dataclass
class DataReport:
    """What happened to every input record: counts, audio hours, length histograms and every problem by file:line.

    One report for both uses, so that `funasr-nano-hf check-data` (before training) and featurization (while
    preparing training) count records, name drops and print problems the same way: nothing is dropped silently.
    """

    manifests: list[str] = field(default_factory=list)
    read: int = 0  # records read, counting the manifest lines that could not become a record
    usable: int = 0  # records that pass every check (check-data) / examples kept for training (featurization)
    dropped: Counter[str] = field(default_factory=Counter)  # reason -> number of records dropped for it
    total_seconds: float = 0.0  # audio of the measured records
    durations: list[float] = field(default_factory=list)  # seconds per measured record
    label_lengths: list[int] = field(default_factory=list)  # transcript length per measured record
    problems: list[Problem] = field(default_factory=list)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    @property
    def has_errors(self) -> bool:
        return any(p.severity == "error" for p in self.problems)

    @property
    def hours(self) -> float:
        return self.total_seconds / 3600

    def measure(self, seconds: float, label_length: int) -> None:
        """Count one record's audio duration and transcript length (hours and histograms)."""
        self.durations.append(seconds)
        self.label_lengths.append(label_length)
        self.total_seconds += seconds

    def to_dict(self) -> dict[str, Any]:
        return {
            "manifests": self.manifests,
            "records": self.read,
            "usable": self.usable,
            "hours": self.hours,
            "dropped": dict(sorted(self.dropped.items())),
            "errors": [str(p) for p in self.errors],
            "warnings": [str(p) for p in self.warnings],
        }

    def format(self, max_problems: int | None = None) -> str:
        """Human-readable report; `max_problems` caps the problem lines (None: all of them)."""
        errors = len(self.errors)
        lines = [
            f"manifests: {', '.join(self.manifests)}",
            f"records: {self.read}  usable: {self.usable}  audio: {self.hours:.3f} h "
            f"({self.total_seconds:.1f} s)  errors: {errors}  warnings: {len(self.problems) - errors}",
        ]
        lines += [f"  dropped ({reason}): {count}" for reason, count in sorted(self.dropped.items())]
        if self.durations or self.label_lengths:
            lines += _histogram("duration (s)", self.durations)
            lines += _histogram("label length", self.label_lengths)
        shown = self.problems if max_problems is None else self.problems[:max_problems]
        lines += [f"  {p}" for p in shown]
        if len(shown) < len(self.problems):
            lines.append(f"  ... and {len(self.problems) - len(shown)} more problems")
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
