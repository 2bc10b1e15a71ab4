"""Fun-ASR-Nano on the Hugging Face stack.

`import funasr_nano_hf` registers our config/model/processor with the transformers Auto classes.
"""

from .conversion import load_pretrained, save_pretrained
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
    "save_pretrained",
    "transcribe",
]
