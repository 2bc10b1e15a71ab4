"""Data: manifest readers/writers, audio, checks and their report, featurization (datasets; features on the fly or
precomputed), augmentation, streaming, `datasets` Audio inputs, padding, batch samplers."""

from ..errors import AudioError, DataError
from .audio import fbank_frames, load_audio
from .augmentation import Augmentation
from .collator import FunAsrNanoCollator
from .featurize import DataConfig, build_dataset
from .hf_audio import build_dataset_from_hf
from .readers import AsrRecord, Problem, read_manifest, read_manifests
from .report import DataReport
from .samplers import build_batch_sampler
from .streaming import StreamingBatches

__all__ = [
    "AsrRecord",
    "Augmentation",
    "AudioError",
    "DataConfig",
    "DataError",
    "DataReport",
    "FunAsrNanoCollator",
    "Problem",
    "StreamingBatches",
    "build_batch_sampler",
    "build_dataset",
    "build_dataset_from_hf",
    "fbank_frames",
    "load_audio",
    "read_manifest",
    "read_manifests",
]
