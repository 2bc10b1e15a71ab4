"""Data: manifest readers/writers, audio, checks and their report, featurization (datasets), padding, batch samplers."""

from ..errors import AudioError, DataError
from .audio import fbank_frames, load_audio
from .collator import FunAsrNanoCollator
from .featurize import DataConfig, build_dataset
from .readers import AsrRecord, Problem, read_manifest, read_manifests
from .report import DataReport
from .samplers import build_batch_sampler

__all__ = [
    "AsrRecord",
    "AudioError",
    "DataConfig",
    "DataError",
    "DataReport",
    "FunAsrNanoCollator",
    "Problem",
    "build_batch_sampler",
    "build_dataset",
    "fbank_frames",
    "load_audio",
    "read_manifest",
    "read_manifests",
]
