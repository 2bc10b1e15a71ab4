"""Fun-ASR-Nano model classes: transformers' `fun_asr_nano` classes subclassed to compute what FunASR computes.

Importing this registers them with the transformers Auto classes under the model type `funasr_nano_hf`.
"""

from .configuration_funasr_nano import FunAsrNanoHfConfig
from .feature_extraction_funasr_nano import FunAsrNanoHfFeatureExtractor
from .modeling_funasr_nano import FunAsrNanoHfForConditionalGeneration, FunAsrNanoHfModel
from .processing_funasr_nano import FunAsrNanoHfProcessor

__all__ = [
    "FunAsrNanoHfConfig",
    "FunAsrNanoHfFeatureExtractor",
    "FunAsrNanoHfForConditionalGeneration",
    "FunAsrNanoHfModel",
    "FunAsrNanoHfProcessor",
]
