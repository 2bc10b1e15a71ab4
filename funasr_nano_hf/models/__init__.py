"""Fun-ASR-Nano model classes (importing this registers them with the transformers Auto classes)."""

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
