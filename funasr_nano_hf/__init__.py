"""Fun-ASR-Nano on the Hugging Face stack: FunASR's speech recogniser as transformers classes, numerically equal.

`load_pretrained` reads FunASR's ORIGINAL folder (config.yaml + model.pt + Qwen3-0.6B/) or an HF folder that
`save_hf_folder` wrote; `transcribe` runs it; `conversion.export.export_funasr` writes the original layout back.
`import funasr_nano_hf` registers our config/model/processor with the transformers Auto classes.
"""

from .conversion import load_pretrained, save_hf_folder
from .errors import AudioError, CheckpointError, DataError, NonFiniteLossError, TrainingOutOfMemoryError
from .inference import transcribe
from .models import (
    FunAsrNanoHfConfig,
    FunAsrNanoHfFeatureExtractor,
    FunAsrNanoHfForConditionalGeneration,
    FunAsrNanoHfModel,
    FunAsrNanoHfProcessor,
)

__version__ = "0.1.0"

__all__ = [
    "AudioError",
    "CheckpointError",
    "DataError",
    "NonFiniteLossError",
    "TrainingOutOfMemoryError",
    "FunAsrNanoHfConfig",
    "FunAsrNanoHfFeatureExtractor",
    "FunAsrNanoHfForConditionalGeneration",
    "FunAsrNanoHfModel",
    "FunAsrNanoHfProcessor",
    "load_pretrained",
    "save_hf_folder",
    "transcribe",
]
