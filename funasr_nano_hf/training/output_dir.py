"""One run per output folder: a finished or running run is never overwritten, continued by mistake, or mixed
with a second one.

`claim_output_dir` is called by the main process before anything is written into ``--output_dir``:

1. The lock. ``<output_dir>/.run.lock`` is created with ``O_CREAT | O_EXCL`` (atomic: of two runs started at
   once exactly one creates it) and holds the owner's pid, host, process start time, run id and command. A
   second run finds it and is refused with a message naming the holder. A lock whose pid is dead on this host
   (or whose pid now belongs to another process: a different start time) is stale: it is taken over, with a
   log line. A lock from another host cannot be checked from here: refused, with how to remove it by hand.
2. The previous run. A folder holding a run (`RUN_MARKERS`: its ``config.yaml``, ``train.log``, ``final/``,
   checkpoints ...) is refused unless ``--resume`` / ``--resume_from_checkpoint`` (continue it) or
   ``--overwrite_output_dir`` (start clean: the folder's content is deleted, every removed entry logged --
   the flag says "overwrite", and a copy moved aside would silently double the disk use of every re-run).
   Other files (a folder that holds no run) are left alone.

The lock is released (deleted, only when it is still ours) when the run ends, also by an exception; a
``kill -9`` leaves it, and the next run takes it over as stale. The lock's run id also names the run's
staging folders (`checkpointing.set_run_id`), so two runs never share one.

Hand-written: transformers' Trainer has no folder lock, and v5 removed its ``overwrite_output_dir`` check.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .secrets import redact_argv

logger = logging.getLogger(__name__)

LOCK_NAME = ".run.lock"
# What a fine-tuning run leaves in its output folder: any of these means the folder holds a run.
RUN_MARKERS = (
    "config.yaml",
    "train.log",
    "final",
    "final_merged",
    "model_avg",
    "all_results.json",
    "trainer_state.json",
    "nbest.json",
)


class OutputDirError(RuntimeError):
    """The output folder holds another run, or another run is writing it; the message names it and the options."""


def _process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (/proc/<pid>/stat field 22); None where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


@dataclass
class RunLock:
    """The content of ``.run.lock``: who holds the folder."""

    pid: int
    host: str
    run_id: str
    started: str
    process_start: str | None = None
    command: str = ""
    path: str = field(default="", repr=False)

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host}, started {self.started}, run {self.run_id}: {self.command}"

    def stale_reason(self) -> str | None:
        """Why this lock's holder is gone (None: it may be running, or it runs on another host)."""
        if self.host != socket.gethostname():
            return None
        if not _alive(self.pid):
            return f"process {self.pid} is not running"
        start = _process_start(self.pid)
        if self.process_start and start and start != self.process_start:
            return f"pid {self.pid} now belongs to another process"
        return None

    def release(self) -> None:
        """Delete the lock file if it is still this run's."""
        path = Path(self.path)
        try:
            if read_lock(path) == self:
                path.unlink()
        except OSError:
            pass


def read_lock(path: str | os.PathLike) -> RunLock | None:
    """The lock at `path`; None when there is none; an unreadable one (torn write) is treated as held by
    nobody known: pid 0, which `stale_reason` calls dead."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return RunLock(**{**data, "path": str(path)})
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError):
        return RunLock(0, socket.gethostname(), "?", "?", None, "(unreadable lock file)", str(path))


def _new_lock(path: Path) -> RunLock:
    pid = os.getpid()
    return RunLock(
        pid=pid,
        host=socket.gethostname(),
        run_id=uuid.uuid4().hex[:12],
        started=time.strftime("%Y-%m-%d %H:%M:%S"),
        process_start=_process_start(pid),
        command=" ".join(redact_argv(sys.argv)),  # no credential in the lock file or the log
        path=str(path),
    )


def _create(path: Path, lock: RunLock) -> bool:
    """Create the lock file atomically; False when it already exists."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    payload = {k: v for k, v in asdict(lock).items() if k != "path"}
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(payload, handle)
        handle.flush()
        os.fsync(handle.fileno())
    return True


def acquire_lock(output_dir: str | os.PathLike, notes: list[str] | None = None) -> RunLock:
    """Take ``<output_dir>/.run.lock`` (stale ones taken over, noted in `notes`); `OutputDirError` naming the
    holder when another run has it."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / LOCK_NAME
    lock = _new_lock(path)
    for _ in range(20):
        if _create(path, lock):
            return lock
        holder = read_lock(path)
        if holder is None:  # released between our two looks
            continue
        reason = holder.stale_reason()
        if reason is None:
            remote = holder.host != socket.gethostname()
            raise OutputDirError(
                f"--output_dir {out} is in use by another run ({holder.describe()}). Wait for it to end or use "
                "another --output_dir"
                + (
                    f"; that run is on host {holder.host}, which cannot be checked from here: if it is gone, "
                    f"delete {path}"
                    if remote
                    else ""
                )
            )
        # Stale: move it aside under a name of our own (of two runs taking it over, one rename wins), then retry.
        aside = path.with_name(f"{LOCK_NAME}.stale-{lock.run_id}")
        try:
            os.rename(path, aside)
        except FileNotFoundError:
            continue
        aside.unlink(missing_ok=True)
        if notes is not None:
            notes.append(f"took over the stale lock {path} ({reason}; it was {holder.describe()})")
    raise OutputDirError(f"--output_dir {out}: could not take {path} (it keeps changing hands)")


def previous_run(output_dir: str | os.PathLike) -> list[str]:
    """The entries of `output_dir` that show it holds a run (sorted); empty when it holds none."""
    out = Path(output_dir)
    if not out.is_dir():
        return []
    found = [name for name in RUN_MARKERS if (out / name).exists()]
    found += [p.name for p in out.glob(f"{PREFIX_CHECKPOINT_DIR}-*") if p.is_dir()]
    return sorted(found)


def clear_output_dir(output_dir: str | os.PathLike) -> list[str]:
    """Delete everything in `output_dir` except the lock; returns the removed names."""
    out = Path(output_dir)
    removed = []
    for entry in sorted(out.iterdir()):
        if entry.name == LOCK_NAME:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
        removed.append(entry.name)
    return removed


@dataclass
class OutputDirClaim:
    """What `claim_output_dir` did: the lock held, and what to log once train.log is open."""

    lock: RunLock
    notes: list[str] = field(default_factory=list)

    def log(self) -> None:
        for note in self.notes:
            logger.warning(note)
        logger.info("output folder %s locked by this run (%s)", Path(self.lock.path).parent, self.lock.describe())

    def release(self) -> None:
        self.lock.release()


def claim_output_dir(output_dir: str | os.PathLike, *, resume: bool, overwrite: bool) -> OutputDirClaim:
    """Lock `output_dir` for this run and check what it holds (the module docstring); `OutputDirError` when the
    run must not write there. Call on the main process only, before anything is written into the folder."""
    if resume and overwrite:
        raise OutputDirError(
            "--resume continues the run in --output_dir, --overwrite_output_dir deletes it: give one of them"
        )
    notes: list[str] = []
    lock = acquire_lock(output_dir, notes)
    try:
        found = previous_run(output_dir)
        if found and overwrite:
            removed = clear_output_dir(output_dir)
            notes.append(
                f"--overwrite_output_dir: deleted the previous run in {output_dir} ({', '.join(removed)}); "
                "starting clean"
            )
        elif found and not resume:
            shown = ", ".join(found[:8]) + (f" and {len(found) - 8} more" if len(found) > 8 else "")
            work = [name for name in found if name not in ("config.yaml", "train.log")]
            early = "" if work else " (it ended before its first checkpoint: --resume starts it again)"
            raise OutputDirError(
                f"--output_dir {output_dir} already holds a run ({shown}){early}. Nothing was changed. Use --resume "
                "to continue it, --overwrite_output_dir to delete it and start clean, or another --output_dir"
            )
    except BaseException:
        lock.release()
        raise
    return OutputDirClaim(lock, notes)


def shared_run_id(run_id: str | None, world_size: int) -> str:
    """The main process's run id on every process (they name the same staging folders)."""
    if world_size == 1:
        return run_id or ""
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([run_id], from_process=0)[0] or ""
