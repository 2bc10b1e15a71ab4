"""The package's exception types, in one place: each names the file (or batch/step) and the remedy.

Catch them by class: `CheckpointError` (a model folder/file that cannot be loaded), `AudioError` (an audio
file that cannot be used), `DataError` (manifests with errors under ``on_bad_data="stop"``),
`NonFiniteLossError` (``--on_nonfinite stop``), `TrainingOutOfMemoryError` (a training batch that did not fit).
"""

from __future__ import annotations


class CheckpointError(ValueError):
    """A model folder or file that cannot be loaded; the message names the file."""


class AudioError(ValueError):
    """An audio file that cannot be used; the message names the file and the reason."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class DataError(ValueError):
    """Manifests with errors when `on_bad_data="stop"`; the message lists them with file:line."""


class NonFiniteLossError(RuntimeError):
    """Training stopped on a non-finite loss or gradient (``--on_nonfinite stop``)."""


class DiskFullError(OSError):
    """No space left while writing an output; the message names the file and the newest intact checkpoint."""


class TrainingOutOfMemoryError(RuntimeError):
    """A training batch did not fit in memory; the message names the batch and the options to change."""


__all__ = [
    "AudioError",
    "CheckpointError",
    "DataError",
    "DiskFullError",
    "NonFiniteLossError",
    "TrainingOutOfMemoryError",
]
