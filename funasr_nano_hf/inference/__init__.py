"""Inference: batched greedy transcription, one decoding loop (`decode_batches`) for audio and dataset rows;
long audio segmented at pauses (`segmentation`); device/dtype/LoRA-merged loading (`runtime`); the transformers
ASR pipeline (`pipeline`, registered by `import funasr_nano_hf`)."""

from .runtime import load_for_inference, resolve_device, resolve_dtype
from .segmentation import Segment, SegmentationConfig
from .transcribe import (
    AudioLike,
    Decoded,
    GenerationBatch,
    decode_batches,
    default_max_new_tokens,
    featurized_batches,
    generate_batch,
    generate_ids,
    repeated_span,
    segment_clips,
    transcribe,
    transcribe_detailed,
    transcribe_featurized,
    waveform_batches,
)

__all__ = [
    "AudioLike",
    "Decoded",
    "GenerationBatch",
    "decode_batches",
    "default_max_new_tokens",
    "featurized_batches",
    "generate_batch",
    "generate_ids",
    "repeated_span",
    "load_for_inference",
    "resolve_device",
    "resolve_dtype",
    "Segment",
    "SegmentationConfig",
    "segment_clips",
    "transcribe",
    "transcribe_detailed",
    "transcribe_featurized",
    "waveform_batches",
]
