"""Inference: batched transcription."""

from .transcribe import default_max_new_tokens, generate_ids, repeated_span, transcribe, transcribe_detailed

__all__ = ["default_max_new_tokens", "generate_ids", "repeated_span", "transcribe", "transcribe_detailed"]
