"""Pad featurized examples into model batches.

Training pads text on the right (labels with -100); generation needs the prompt alone, padded on the
LEFT so that every row's prompt ends where decoding starts. Audio features are always right-padded
with a frame mask (the encoder and adaptor mask padding). Features arrive as numpy arrays (precomputed: the
dataset's numpy format; on the fly: the transform's output) and are copied once into one preallocated batch.

Examples that could not be loaded on the fly (`BAD_FIELD` set, under ``--on_bad_data skip``) are dropped here,
in the loader worker, and named in the batch (`SKIPPED_FIELD`) for the trainer to count and report.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.nn.utils.rnn import pad_sequence

from ..errors import DataError

IGNORE_INDEX = -100
BAD_FIELD = "bad_example"  # why an example could not be loaded ("" = it could)
SKIPPED_FIELD = "skipped_examples"  # the batch's dropped examples, "source: reason" each


def loadable(examples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The examples whose audio loaded (all of them outside on-the-fly mode)."""
    return [e for e in examples if not e.get(BAD_FIELD)]


def pad_features(arrays: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """(batch, frames, dim) float32 right-padded with zeros, and the (batch, frames) frame mask."""
    frames = np.fromiter((a.shape[0] for a in arrays), dtype=np.int64, count=len(arrays))
    dim = next((a.shape[1] for a in arrays if a.ndim == 2), 0)
    out = np.zeros((len(arrays), int(frames.max()), dim), dtype=np.float32)
    for row, array in zip(out, arrays):
        row[: array.shape[0]] = array
    lengths = torch.from_numpy(frames)
    mask = (torch.arange(int(frames.max()))[None, :] < lengths[:, None]).long()
    return torch.from_numpy(out), mask


def _pad(rows: list[torch.Tensor], value: float, side: str) -> torch.Tensor:
    return pad_sequence(rows, batch_first=True, padding_value=value, padding_side=side)


@dataclass
class FunAsrNanoCollator:
    """`for_generation=True` keeps only each example's prompt (its first `prompt_length` ids)."""

    pad_token_id: int
    for_generation: bool = False

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        if not examples:
            raise ValueError("cannot collate an empty batch")
        kept = loadable(examples)
        if not kept:
            reasons = "; ".join(str(e[BAD_FIELD]) for e in examples)
            raise DataError(f"no example of this batch could be loaded: {reasons}. Fix or drop them (check-data)")
        skipped = [str(e[BAD_FIELD]) for e in examples if e.get(BAD_FIELD)]
        examples = kept
        # Frozen-path caching stores the LLM-visible audio embeddings instead of the features.
        audio_key = "audio_embeds" if "audio_embeds" in examples[0] else "input_features"
        features, mask = pad_features([np.asarray(e[audio_key], dtype=np.float32) for e in examples])
        batch: dict[str, Any] = {audio_key: features, f"{audio_key}_mask": mask}
        if skipped:
            batch[SKIPPED_FIELD] = skipped
        ids = [torch.as_tensor(e["input_ids"], dtype=torch.long) for e in examples]
        if self.for_generation:
            ids = [row[: int(e["prompt_length"])] for row, e in zip(ids, examples)]
            side = "left"
        else:
            side = "right"
            batch["labels"] = _pad(
                [torch.as_tensor(e["labels"], dtype=torch.long) for e in examples], IGNORE_INDEX, side
            )
        batch["input_ids"] = _pad(ids, self.pad_token_id, side)
        batch["attention_mask"] = _pad([torch.ones_like(row) for row in ids], 0, side)
        return batch
