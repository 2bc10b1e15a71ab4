"""Checkpoint folders that are complete or invisible, found by "newest complete", vetted before loading.

Writing. `atomic_directory(target)` hands out a staging folder ``.tmp-<name>/<name>`` next to `target`; once
everything is written, `publish` fsyncs every file and folder in it, writes the completion marker
(``checkpoint_complete.json``: the relative path and size of every file, checkpoints only) and fsyncs it,
renames the folder to `target` (replacing an older one) and fsyncs the parent. A ``kill -9`` at any moment
therefore leaves either no `target` or a complete one, plus possibly a ``.tmp-*`` leftover, which
`remove_stale_temporaries` deletes, with a log line, when the next training starts. Deleting goes the other
way round (`remove_directory`: renamed to a ``.tmp-`` name first), so a half-deleted checkpoint is never
visible either. The Trainer's checkpoints (`FunAsrNanoTrainer._save_checkpoint`), the n-best average and
the final model folders are all written this way.

The completion marker is this module's alone: it is written only here (`publish` with
``complete_marker=True``, `mark_complete`, `adopt_checkpoint`), and read only here (`checkpoint_problem`). A
folder published without a marker never carries one, even when it was staged from a copy of a checkpoint
(the n-best average): it is a model folder, not a checkpoint to resume.

Reading. `newest_complete_checkpoint(output_dir)` is the ``checkpoint-<step>`` with the highest step whose
marker is present and whose files all have their recorded sizes; torn ones (no marker: a folder from an
older version or another writer, a copy cut short, a half-deleted one) are skipped with a log line.

Vetting. `vet_checkpoint(folder)` opens every file that resuming will read, before the Trainer does: JSON
files are parsed, safetensors headers read, and every pickle-based file (optimizer, scheduler, scaler, RNG
states, DeepSpeed shards, ``*.bin`` weights) is loaded with ``torch.load(weights_only=True)``: tensors and
plain containers only, plus numpy's RNG-state types and DeepSpeed's three plain state classes. A pickle
that would run code, a truncated or corrupt file: `CheckpointError` naming the file. (The Trainer itself
loads these files with ``weights_only=True``; DeepSpeed loads its shards with ``weights_only=False``, which
is why they are vetted with the restricted loader first.) ``training_args.bin`` (a pickled
``TrainingArguments`` that resuming never reads) is left alone.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import pickle
import re
import shutil
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ..errors import CheckpointError, DiskFullError

logger = logging.getLogger(__name__)

__all__ = [
    "COMPLETE_MARKER",
    "TMP_PREFIX",
    "adopt_checkpoint",
    "atomic_directory",
    "atomic_write_bytes",
    "complete_checkpoints",
    "checkpoint_problem",
    "disk_full_error",
    "mark_complete",
    "newest_complete_checkpoint",
    "publish",
    "remove_directory",
    "remove_stale_temporaries",
    "scan_checkpoints",
    "set_run_id",
    "staging_path",
    "vet_checkpoint",
]

COMPLETE_MARKER = "checkpoint_complete.json"
TMP_PREFIX = ".tmp-"
_CHECKPOINT_RE = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")
_PICKLED_SUFFIXES = (".pt", ".pth", ".bin")
_NEVER_LOADED = {"training_args.bin"}
_reported: set[tuple[Path, str]] = set()  # torn checkpoints already logged (the n-best callback scans often)


# ----------------------------------------------------------------------------------------------------------
# writing
# ----------------------------------------------------------------------------------------------------------
def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for folder, _, files in os.walk(root):
        for name in files:
            _fsync(Path(folder) / name)
        _fsync(Path(folder))


def _file_sizes(root: Path) -> dict[str, int]:
    return {
        path.relative_to(root).as_posix(): path.stat().st_size
        for path in sorted(root.rglob("*"))
        if path.is_file() and path.name != COMPLETE_MARKER
    }


_run_id = ""  # this run's id (`set_run_id`), in its staging folders' names


def set_run_id(run_id: str) -> None:
    """Name this run's staging folders after `run_id` (the same on every rank), so that two runs writing one
    folder never share (or delete) each other's (`training.output_dir` locks the folder; this is the second
    guard)."""
    global _run_id
    _run_id = run_id


def staging_path(target: str | os.PathLike) -> Path:
    """Where `target` is written before `publish`: ``<parent>/.tmp-<name>[-<run id>]/<name>`` (the same on every
    rank)."""
    target = Path(target)
    suffix = f"-{_run_id}" if _run_id else ""
    return target.parent / f"{TMP_PREFIX}{target.name}{suffix}" / target.name


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write a file that readers see whole or not at all (temporary sibling, fsync, rename, fsync the folder)."""
    path = Path(path)
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}-{os.getpid()}")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    _fsync(path.parent)


def mark_complete(folder: str | os.PathLike) -> Path:
    """fsync every file of `folder`, then write and fsync its completion marker (every file's size). `publish`
    does this for checkpoints; call it by hand only on a folder known to be complete (e.g. a checkpoint
    written before atomic saving existed)."""
    folder = Path(folder)
    _fsync_tree(folder)
    payload = {"files": _file_sizes(folder)}
    marker = folder / COMPLETE_MARKER
    with open(marker, "w", encoding="utf-8") as handle:
        json.dump(payload, handle, indent=1, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())
    _fsync(folder)
    return marker


def adopt_checkpoint(folder: str | os.PathLike) -> bool:
    """Mark a checkpoint that another writer has finished (a plain `Trainer`'s, when its ``on_save`` fires)
    complete, unless it already has its marker. True when a marker was written."""
    folder = Path(folder)
    if not folder.is_dir() or (folder / COMPLETE_MARKER).exists():
        return False
    mark_complete(folder)
    return True


def publish(staged: str | os.PathLike, target: str | os.PathLike, *, complete_marker: bool = False) -> Path:
    """Make the fully written `staged` folder visible as `target` (see the module docstring). Without
    `complete_marker`, a marker copied into `staged` (from a checkpoint) is removed first."""
    staged, target = Path(staged), Path(target)
    if complete_marker:
        mark_complete(staged)
    else:
        (staged / COMPLETE_MARKER).unlink(missing_ok=True)
        _fsync_tree(staged)
    root = staged.parent
    if target.exists():  # a directory cannot be renamed over a non-empty one: move the old one aside first
        os.rename(target, root / f"replaced-{target.name}")
    os.rename(staged, target)
    _fsync(target.parent)
    if root.name.startswith(TMP_PREFIX) and root.parent == target.parent:
        shutil.rmtree(root, ignore_errors=True)
    return target


@contextlib.contextmanager
def atomic_directory(
    target: str | os.PathLike,
    *,
    complete_marker: bool = False,
    main_process: bool = True,
    barrier: Callable[[], None] = lambda: None,
) -> Iterator[Path]:
    """``with atomic_directory(out) as tmp:`` write into `tmp`; on success `out` appears complete.

    With several processes writing one folder (DeepSpeed shards, per-rank RNG states) pass
    ``main_process`` (the one that prepares and publishes) and ``barrier`` (wait for all). An exception
    removes the staging folder; a kill leaves it for `remove_stale_temporaries`.
    """
    target = Path(target)
    staged = staging_path(target)
    if main_process:
        if staged.parent.exists():
            shutil.rmtree(staged.parent)
        staged.mkdir(parents=True)
    barrier()
    try:
        yield staged
        barrier()
        if main_process:
            publish(staged, target, complete_marker=complete_marker)
    except BaseException as err:
        if main_process:
            shutil.rmtree(staged.parent, ignore_errors=True)
        if isinstance(err, OSError) and err.errno == errno.ENOSPC and not isinstance(err, DiskFullError):
            raise disk_full_error(err, target.parent, target) from err
        raise
    barrier()


def disk_full_error(err: OSError, output_dir: str | os.PathLike, writing: str | os.PathLike) -> DiskFullError:
    """`DiskFullError` for an ENOSPC met while writing `writing` into the run's `output_dir`: the file (the
    error's, else `writing`), and the newest checkpoint that is complete, hence intact."""
    newest = newest_complete_checkpoint(output_dir)
    intact = f"checkpoints up to {Path(newest).name} are intact" if newest else "no complete checkpoint was written"
    return DiskFullError(
        errno.ENOSPC,
        f"no space left on device while writing {err.filename or writing}; {intact}. Free space (or keep fewer "
        "checkpoints: --keep_nbest_models, --save_total_limit) and continue with --resume",
    )


def remove_directory(path: str | os.PathLike) -> None:
    """Delete a folder so that it is never seen half-deleted: rename it to a ``.tmp-`` name, then remove it."""
    path = Path(path)
    doomed = path.with_name(f"{TMP_PREFIX}deleted-{path.name}-{os.getpid()}")
    os.rename(path, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def remove_stale_temporaries(output_dir: str | os.PathLike) -> list[Path]:
    """Delete the ``.tmp-*`` leftovers of a killed run in `output_dir` (each one logged); returns them."""
    root = Path(output_dir)
    stale = sorted(root.glob(f"{TMP_PREFIX}*")) if root.is_dir() else []
    for path in stale:
        logger.warning("removing %s: left over by an interrupted save or delete (never a complete output)", path)
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return stale


# ----------------------------------------------------------------------------------------------------------
# reading
# ----------------------------------------------------------------------------------------------------------
def checkpoint_problem(folder: str | os.PathLike) -> str | None:
    """Why `folder` is not a complete checkpoint (None when it is)."""
    folder = Path(folder)
    marker = folder / COMPLETE_MARKER
    if not marker.is_file():
        return f"no {COMPLETE_MARKER} (torn save or delete, or written without atomic checkpoints)"
    try:
        recorded = json.loads(marker.read_text(encoding="utf-8"))["files"]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as err:
        return f"unreadable {COMPLETE_MARKER} ({err})"
    for name, size in recorded.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} has {path.stat().st_size} bytes, {size} were written"
    return None


def scan_checkpoints(
    output_dir: str | os.PathLike, max_step: int | None = None
) -> tuple[dict[int, Path], dict[Path, str]]:
    """The ``checkpoint-<step>`` folders of `output_dir` (step <= `max_step`): step -> folder for the complete
    ones, folder -> problem for the torn ones (each logged once)."""
    root = Path(output_dir)
    complete: dict[int, Path] = {}
    torn: dict[Path, str] = {}
    if not root.is_dir():
        return complete, torn
    for child in root.iterdir():
        match = _CHECKPOINT_RE.match(child.name)
        if not match or not child.is_dir() or (max_step is not None and int(match.group(1)) > max_step):
            continue
        problem = checkpoint_problem(child)
        if problem is None:
            complete[int(match.group(1))] = child
            continue
        torn[child] = problem
        if (child, problem) not in _reported:
            _reported.add((child, problem))
            logger.warning("ignoring checkpoint %s: %s", child, problem)
    return complete, torn


def complete_checkpoints(output_dir: str | os.PathLike, max_step: int | None = None) -> dict[int, Path]:
    """step -> folder for the complete ``checkpoint-<step>`` folders of `output_dir` (step <= `max_step`)."""
    return scan_checkpoints(output_dir, max_step)[0]


def newest_complete_checkpoint(output_dir: str | os.PathLike) -> str | None:
    """The complete checkpoint with the highest step in `output_dir`, or None (what ``--resume`` continues)."""
    checkpoints = complete_checkpoints(output_dir)
    return str(checkpoints[max(checkpoints)]) if checkpoints else None


# ----------------------------------------------------------------------------------------------------------
# vetting
# ----------------------------------------------------------------------------------------------------------
def _restricted_globals(needs_deepspeed: bool) -> list:
    """What a checkpoint's pickles may reference besides tensors: numpy's RNG-state types (as transformers
    allows them) and, for DeepSpeed shards, its plain state classes."""
    import numpy as np

    core = np._core if hasattr(np, "_core") else np.core
    allowed = [core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]
    if needs_deepspeed:
        from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
        from deepspeed.runtime.zero.config import ZeroStageEnum
        from deepspeed.utils.tensor_fragment import fragment_address

        allowed += [ZeroStageEnum, fragment_address, LossScaler, DynamicLossScaler]
    return allowed


def _vet_pickle(path: Path, allowed: list) -> None:
    try:
        with torch.serialization.safe_globals(allowed):
            torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as err:
        found = re.search(r"unsupported GLOBAL (\S+)", str(err))
        if found:
            raise CheckpointError(
                f"{path}: refused: it references {found.group(1)}, loading it could run code "
                "(only tensors and plain data are accepted: torch.load(weights_only=True))"
            ) from err
        detail = next((line for line in str(err).splitlines() if "Unsupported" in line), str(err).splitlines()[0])
        raise CheckpointError(
            f"{path}: refused: not a plain tensor file, corrupt or a pickle torch.load(weights_only=True) does not "
            f"accept ({detail.strip()})"
        ) from err
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: truncated or corrupt ({err})") from err


def _vet_safetensors(path: Path) -> None:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            handle.keys()
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{path}: truncated or corrupt safetensors file ({err})") from err


def _vet_json(path: Path) -> None:
    try:
        json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise CheckpointError(f"{path}: unreadable JSON ({err})") from err


def vet_checkpoint(folder: str | os.PathLike) -> None:
    """Open every file of `folder` that resuming reads, safely; `CheckpointError` names the first bad one."""
    folder = Path(folder)
    state = folder / "trainer_state.json"
    if not state.is_file():
        raise CheckpointError(f"{state}: missing (not a Trainer checkpoint)")
    files = sorted(path for path in folder.rglob("*") if path.is_file())
    allowed = _restricted_globals(needs_deepspeed=any(folder.glob("global_step*")))
    for path in files:
        if path.suffix == ".json":
            _vet_json(path)
        elif path.suffix == ".safetensors":
            _vet_safetensors(path)
        elif path.suffix in _PICKLED_SUFFIXES and path.name not in _NEVER_LOADED:
            _vet_pickle(path, allowed)


# ----------------------------------------------------------------------------------------------------------
# what a saved model folder holds
# ----------------------------------------------------------------------------------------------------------
# The safetensors weight files of a model or adapter folder, in the order they are looked for: a peft folder has
# the adapter file; a full model has model.safetensors or shards listed in the index.
WEIGHT_FILES = ("adapter_model.safetensors", "model.safetensors")
SHARD_INDEX = "model.safetensors.index.json"


def weight_files(folder: str | os.PathLike) -> list[str]:
    """Names (relative to `folder`) of its safetensors weight files (`WEIGHT_FILES`, index-listed shards)."""
    folder = Path(folder)
    names = [name for name in WEIGHT_FILES if (folder / name).is_file()]
    index = folder / SHARD_INDEX
    if index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        names += sorted(set(weight_map.values()) - set(names))
    return names


def saved_tensor_names(folder: str | os.PathLike) -> set[str]:
    """Names of the tensors in the weight files of a model or adapter folder (safetensors headers only)."""
    from safetensors import safe_open

    names: set[str] = set()
    for name in weight_files(folder):
        with safe_open(str(Path(folder) / name), framework="pt", device="cpu") as handle:
            names.update(handle.keys())
    return names


def trained_tensor_names(model: torch.nn.Module) -> dict[str, str]:
    """{name the tensor is saved under: parameter name} for every parameter with ``requires_grad``.

    A peft model saves ``...lora_A.default.weight`` as ``...lora_A.weight`` and a ``modules_to_save`` copy
    ``...<module>.modules_to_save.default.<param>`` as ``...<module>.<param>``; other models save parameters
    under their own names (a tied parameter is listed once)."""
    adapter = getattr(model, "active_adapter", None)
    drop = {"modules_to_save", adapter} if isinstance(adapter, str) else set()
    return {
        ".".join(part for part in name.split(".") if part not in drop): name
        for name, parameter in model.named_parameters()
        if parameter.requires_grad
    }


def check_saved_covers_training(model: torch.nn.Module, folder: str | os.PathLike) -> None:
    """Raise `CheckpointError` naming every trained parameter that the folder's weight files do not hold: training
    must never be thrown away silently (e.g. a module unfrozen next to LoRA but not in ``modules_to_save``)."""
    saved = saved_tensor_names(folder)
    missing = sorted(param for key, param in trained_tensor_names(model).items() if key not in saved)
    if missing:
        shown = ", ".join(missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
        raise CheckpointError(
            f"{folder}: {len(missing)} trained parameter(s) are not in the saved weights ({shown}); saving would "
            "lose their training. With LoRA, list the trained modules in LoraConfig(modules_to_save=...) "
            "(training.model_setup.modules_to_save does this for --freeze_* false)"
        )
