"""Inference: batched greedy transcription, one decoding loop (`decode_batches`) for audio and dataset rows."""

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
    "transcribe",
    "transcribe_detailed",
    "transcribe_featurized",
    "waveform_batches",
]
