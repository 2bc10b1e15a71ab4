"""Inference: batched transcription."""

from .transcribe import default_max_new_tokens, generate_ids, transcribe

__all__ = ["default_max_new_tokens", "generate_ids", "transcribe"]
