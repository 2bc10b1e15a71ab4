"""Out of memory in a training step: a message that names the batch and the knobs, not a bare traceback.

`out_of_memory_guard` wraps the training step (forward + backward). ``torch.OutOfMemoryError`` (GPU),
``MemoryError`` and the CPU allocator's ``RuntimeError: DefaultCPUAllocator: can't allocate memory`` become
`TrainingOutOfMemoryError`, chained to the original error, saying which batch did not fit (examples, audio
frames, tokens, keys) and what to turn: ``--batch_size`` (examples per batch under batch type example, the
padded budget under length/token), ``--max_source_length``/``--max_target_length``,
``--activation_checkpoint true`` (gradient checkpointing of the LLM), ``--llm_dtype bf16``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import TrainingOutOfMemoryError

_OOM_TEXTS = ("out of memory", "can't allocate memory", "not enough memory")


def is_out_of_memory(error: BaseException) -> bool:
    """Whether `error` is an allocation failure: a GPU or Python out-of-memory error, or the CPU allocator's."""
    if isinstance(error, (torch.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(error, RuntimeError) and any(text in str(error) for text in _OOM_TEXTS)


@dataclass(frozen=True)
class BatchShape:
    """What a batch asks of memory: its examples, padded audio frames, padded tokens, and the examples' keys."""

    examples: int
    audio_frames: int
    tokens: int
    keys: tuple[str, ...] = ()

    @classmethod
    def of(cls, inputs: dict[str, Any], keys: Sequence[str] = ()) -> BatchShape:
        """The shape of a collated batch (``input_features`` or ``audio_embeds``, ``input_ids``)."""
        audio = inputs.get("input_features", inputs.get("audio_embeds"))
        ids = inputs.get("input_ids")
        examples = next((len(v) for v in (ids, audio) if isinstance(v, torch.Tensor)), len(keys))
        return cls(
            examples=int(examples),
            audio_frames=int(audio.shape[1]) if isinstance(audio, torch.Tensor) and audio.dim() > 1 else 0,
            tokens=int(ids.shape[1]) if isinstance(ids, torch.Tensor) and ids.dim() > 1 else 0,
            keys=tuple(keys),
        )


def out_of_memory_message(step: int, shape: BatchShape, *, device: str, batch_type: str, batch_size: int) -> str:
    """What `TrainingOutOfMemoryError` says: the step, the batch that did not fit, the options that make it
    fit (the ones for this `batch_type` first)."""
    keys = list(shape.keys[:8]) + (["..."] if len(shape.keys) > 8 else [])
    if batch_type == "example":
        smaller = (
            f"lower --batch_size (now {batch_size} examples), or use --batch_type token, where --batch_size is a "
            "padded budget of fbank frames + text tokens, so long utterances get smaller batches"
        )
    else:
        smaller = f"lower --batch_size (now {batch_size}: the padded budget of fbank frames + text tokens per batch)"
    return (
        f"out of memory ({device}) in training step {step} on a batch of {shape.examples} examples padded to "
        f"{shape.audio_frames} audio frames and {shape.tokens} tokens (examples {keys}). This batch does not "
        f"fit: {smaller}; shorten the longest inputs with --max_source_length / --max_target_length; trade "
        "compute for memory with --activation_checkpoint true (gradient checkpointing of the LLM); or keep the "
        "LLM in --llm_dtype bf16"
    )


@contextlib.contextmanager
def out_of_memory_guard(step: int, shape: BatchShape, **settings: Any) -> Iterator[None]:
    """Re-raise an out-of-memory error inside the block as `TrainingOutOfMemoryError` (chained); `settings` are
    `out_of_memory_message`'s keyword arguments."""
    try:
        yield
    except (MemoryError, RuntimeError) as error:
        if isinstance(error, TrainingOutOfMemoryError) or not is_out_of_memory(error):
            raise
        raise TrainingOutOfMemoryError(out_of_memory_message(step, shape, **settings)) from error
