"""Checkpoint averaging (FunASR's ``avg_nbest_model``): the fp32 mean of several checkpoint folders.

`average_checkpoints` works on any checkpoint folders (after the fact too); `NBestCheckpointCallback`
(`callbacks`) calls it at the end of training. Hand-written: transformers/peft have no checkpoint averaging.
The average is a model (or adapter) folder, not a checkpoint to resume: the training state is left out, and
it is published without a completion marker (`checkpointing.publish`).
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import torch

from ..testing.faults import fault_point
from .checkpointing import SHARD_INDEX, WEIGHT_FILES, atomic_directory, weight_files

__all__ = ["TRAINING_STATE_PATTERNS", "average_checkpoints"]

# Files of a checkpoint that describe the training run, not the model: left out of the averaged folder.
# Stale .bin weights are left out too: they would hold one checkpoint's weights, not the average.
TRAINING_STATE_PATTERNS = (
    "optimizer.pt",
    "optimizer.bin",
    "optimizer_*",
    "scheduler.pt",
    "scaler.pt",
    "rng_state*.pth",
    "trainer_state.json",
    "global_step*",  # DeepSpeed's optimizer shards
    "latest",  # DeepSpeed's pointer to them
    "pytorch_model*.bin",
    "adapter_model.bin",
)


def _weight_files(folder: Path) -> list[str]:
    """Names (relative to `folder`) of the safetensors weight files to average."""
    names = weight_files(folder)
    if not names:
        raise FileNotFoundError(
            f"{folder}: no {' / '.join(WEIGHT_FILES)} (or {SHARD_INDEX}) to average; "
            "only safetensors checkpoints are supported"
        )
    return names


def _average_file(files: Sequence[Path]) -> tuple[dict[str, torch.Tensor], dict[str, str] | None]:
    """Mean of one safetensors file over checkpoints, tensor by tensor (peak memory ~ one output model).

    Floating tensors are summed in (at least) float32 -- bf16/fp16 sums lose low bits or overflow -- and
    cast back to the dtype stored in the first (best) file. Integer/bool tensors (counters such as
    BatchNorm's ``num_batches_tracked``) are not averageable: they are copied from the first file.
    """
    from safetensors import safe_open

    with contextlib.ExitStack() as stack:
        handles = [stack.enter_context(safe_open(str(f), framework="pt", device="cpu")) for f in files]
        keys = list(handles[0].keys())
        for handle, path in zip(handles[1:], files[1:]):
            if set(handle.keys()) != set(keys):
                missing = sorted(set(keys) ^ set(handle.keys()))[:5]
                raise ValueError(f"{path}: tensor names differ from {files[0]} (e.g. {missing})")
        averaged: dict[str, torch.Tensor] = {}
        for key in keys:
            first = handles[0].get_tensor(key)
            if not (first.is_floating_point() or first.is_complex()):
                averaged[key] = first.contiguous()
                continue
            accumulate = torch.promote_types(first.dtype, torch.float32)
            total = first.to(accumulate, copy=True)
            for handle, path in zip(handles[1:], files[1:]):
                tensor = handle.get_tensor(key)
                if tensor.shape != first.shape:
                    raise ValueError(
                        f"{path}: {key} has shape {tuple(tensor.shape)}, {files[0]} has {tuple(first.shape)}"
                    )
                total += tensor.to(accumulate)
            total /= len(files)
            averaged[key] = total.to(first.dtype).contiguous()
        return averaged, handles[0].metadata()


def average_checkpoints(paths: Sequence[str | os.PathLike], out_dir: str | os.PathLike) -> Path:
    """Average the weights of checkpoint folders into `out_dir` (a copy of ``paths[0]`` with averaged weights).

    ``paths[0]`` is the template (normally the best checkpoint): its folder is copied without the
    training-state files (optimizer, scheduler, scaler, RNG, trainer_state.json; see
    `TRAINING_STATE_PATTERNS`), so config / adapter_config / processor files come along and the result
    loads like the checkpoint did. Its weight files (``adapter_model.safetensors`` for peft,
    ``model.safetensors`` or index-listed shards otherwise) are replaced by the mean over all `paths`,
    accumulated in float32 and cast back to each tensor's stored dtype; integer tensors come from
    ``paths[0]``. Written atomically (`checkpointing.atomic_directory`): `out_dir` is the complete average or
    is left as it was.
    """
    folders = [Path(p) for p in paths]
    if not folders:
        raise ValueError("average_checkpoints needs at least one checkpoint folder")
    out_dir = Path(out_dir)
    for folder in folders:
        if not folder.is_dir():
            raise FileNotFoundError(f"checkpoint folder {folder} does not exist")
        if out_dir.resolve() == folder.resolve():
            raise ValueError(f"out_dir {out_dir} is one of the checkpoints being averaged")
    names = _weight_files(folders[0])
    for folder in folders[1:]:
        missing = [name for name in names if not (folder / name).is_file()]
        if missing:
            raise FileNotFoundError(f"{folder}: missing {missing} (present in {folders[0]})")

    from safetensors.torch import save_file

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    skipped = set(names)

    def ignore(directory: str, entries: list[str]) -> set[str]:
        relative = Path(directory).relative_to(folders[0])
        return {
            entry
            for entry in entries
            if (relative / entry).as_posix() in skipped
            or any(fnmatch.fnmatch(entry, pattern) for pattern in TRAINING_STATE_PATTERNS)
        }

    with atomic_directory(out_dir) as tmp:
        shutil.copytree(folders[0], tmp, ignore=ignore, dirs_exist_ok=True)
        for name in names:
            tensors, metadata = _average_file([folder / name for folder in folders])
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            save_file(tensors, str(tmp / name), metadata=metadata)
            del tensors
            fault_point("average")
    return out_dir
