"""One run per output folder (funasr_nano_hf/training/output_dir.py): the two lost-work scenarios as real
finetune.py runs, and the lock's rules in process."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from finetune_runs import assert_same_run, finetune_cmd, run

from funasr_nano_hf.training import checkpointing
from funasr_nano_hf.training.output_dir import (
    LOCK_NAME,
    OutputDirError,
    acquire_lock,
    claim_output_dir,
    read_lock,
)

QUICK = ("--max_epoch", "1", "--validate_interval", "100", "--save_checkpoint_interval", "100")


def tree_digest(root: Path) -> dict[str, str]:
    """Every file under `root` (relative path -> sha256), directories included as entries."""
    digest = {}
    for path in sorted(root.rglob("*")):
        key = path.relative_to(root).as_posix()
        digest[key] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "<dir>"
    return digest


def _sleeper() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def _plant_lock(out: Path, pid: int, host: str | None = None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    lock = {"pid": pid, "host": host or socket.gethostname(), "run_id": "other", "started": "earlier"}
    (out / LOCK_NAME).write_text(json.dumps({**lock, "command": "finetune.py (the other run)"}))


# -- the lock and the folder rules, in process ---------------------------------------------------------------
def test_lock_names_a_live_holder_and_takes_over_a_dead_one(tmp_path):
    sleeper = _sleeper()
    try:
        _plant_lock(tmp_path, sleeper.pid)
        for resume, overwrite in ((False, False), (True, False), (False, True)):  # no flag gets past a live run
            with pytest.raises(OutputDirError, match=f"in use by another run \\(pid {sleeper.pid} on"):
                claim_output_dir(tmp_path, resume=resume, overwrite=overwrite)
        assert read_lock(tmp_path / LOCK_NAME).pid == sleeper.pid  # untouched
    finally:
        sleeper.kill()
        sleeper.wait()
    claim = claim_output_dir(tmp_path, resume=False, overwrite=False)  # now dead: stale, taken over
    assert any(
        "took over the stale lock" in note and f"process {sleeper.pid} is not running" in note for note in claim.notes
    )
    assert read_lock(tmp_path / LOCK_NAME).pid == os.getpid()
    claim.release()
    assert not (tmp_path / LOCK_NAME).exists()


def test_lock_of_another_host_is_refused_with_the_remedy(tmp_path):
    _plant_lock(tmp_path, 1, host="elsewhere.example")
    with pytest.raises(
        OutputDirError, match=f"cannot be checked from here: if it is gone, delete {tmp_path / LOCK_NAME}"
    ):
        acquire_lock(tmp_path)


def test_only_one_of_two_simultaneous_claims_wins(tmp_path):
    first = acquire_lock(tmp_path)
    with pytest.raises(OutputDirError, match=f"pid {os.getpid()}"):
        acquire_lock(tmp_path)
    first.release()
    acquire_lock(tmp_path).release()


def test_previous_run_refused_resumed_or_cleared(tmp_path):
    (tmp_path / "checkpoint-2").mkdir(parents=True)
    (tmp_path / "config.yaml").write_text("x: 1\n")
    (tmp_path / "notes.txt").write_text("mine\n")
    before = tree_digest(tmp_path)
    with pytest.raises(
        OutputDirError, match=r"already holds a run \(checkpoint-2, config.yaml\)\. Nothing was changed"
    ):
        claim_output_dir(tmp_path, resume=False, overwrite=False)
    assert tree_digest(tmp_path) == before  # the refused claim left no lock behind
    claim_output_dir(tmp_path, resume=True, overwrite=False).release()
    assert tree_digest(tmp_path) == before
    with pytest.raises(OutputDirError, match="give one of them"):
        claim_output_dir(tmp_path, resume=True, overwrite=True)
    claim = claim_output_dir(tmp_path, resume=False, overwrite=True)
    assert "deleted the previous run" in claim.notes[0] and "checkpoint-2" in claim.notes[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == [LOCK_NAME]
    claim.release()
    (tmp_path / "unrelated.txt").write_text("not a run\n")  # a folder holding no run is used as it is
    claim_output_dir(tmp_path, resume=False, overwrite=False).release()


def test_staging_folders_carry_the_run_id(tmp_path):
    try:
        checkpointing.set_run_id("abc123")
        assert checkpointing.staging_path(tmp_path / "checkpoint-3") == (
            tmp_path / ".tmp-checkpoint-3-abc123" / "checkpoint-3"
        )
        with checkpointing.atomic_directory(tmp_path / "final") as staged:
            assert staged.parent.name == ".tmp-final-abc123"
            (staged / "w").write_text("1")
        assert (tmp_path / "final" / "w").is_file() and not list(tmp_path.glob(".tmp-*"))
    finally:
        checkpointing.set_run_id("")


# -- the two lost-work scenarios, real runs ----------------------------------------------------------------------
@pytest.mark.slow
def test_rerun_into_a_finished_folder_is_refused_and_changes_nothing(tiny_original_dir, fault_data, tmp_path):
    out = tmp_path / "out"
    run(finetune_cmd(tiny_original_dir, fault_data, out, *QUICK))
    assert (out / "final").is_dir() and not (out / LOCK_NAME).exists()
    before = tree_digest(out)
    output = run(finetune_cmd(tiny_original_dir, fault_data, out, *QUICK, "--lr", "1e-3"), returncode=1)
    assert f"--output_dir {out} already holds a run" in output and "--resume" in output
    assert "--overwrite_output_dir" in output
    assert tree_digest(out) == before  # not a byte changed, train.log included
    # --overwrite_output_dir: said so, and the old run is gone
    output = run(finetune_cmd(tiny_original_dir, fault_data, out, *QUICK, "--overwrite_output_dir", "true"))
    log = (out / "train.log").read_text()
    assert "--overwrite_output_dir: deleted the previous run" in log
    assert log.count("run started:") == 1  # the old run's log went with it


@pytest.mark.slow
def test_second_concurrent_run_is_refused_and_the_first_completes(tiny_original_dir, fault_data, reference, tmp_path):
    """The first run is paused (SIGSTOP) once it holds the folder, so the others meet it mid-run whatever the
    machine's speed; it then ends bit-identical to the uninterrupted reference run."""
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    env.pop("FUNASR_NANO_HF_FAULT", None)
    first = subprocess.Popen(
        finetune_cmd(tiny_original_dir, fault_data, out), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env
    )
    try:
        deadline = time.time() + 120
        while not (out / LOCK_NAME).exists() and first.poll() is None and time.time() < deadline:
            time.sleep(0.1)
        holder = read_lock(out / LOCK_NAME)
        assert holder is not None and holder.pid == first.pid
        first.send_signal(signal.SIGSTOP)
        for flags in ((), ("--resume",), ("--overwrite_output_dir", "true")):
            output = run(finetune_cmd(tiny_original_dir, fault_data, out, *flags), returncode=1)
            assert f"--output_dir {out} is in use by another run (pid {first.pid} on {socket.gethostname()}" in output
        first.send_signal(signal.SIGCONT)
        log_first, _ = first.communicate(timeout=300)
        assert first.returncode == 0, log_first.decode()[-4000:]
    finally:
        first.kill()
    log = (out / "train.log").read_text()
    assert log.count("run started:") == 1  # the refused runs wrote nothing, not even a log line
    assert (out / "final" / "adapter_model.safetensors").is_file() and (out / "model_avg").is_dir()
    assert not list(out.glob(".tmp-*")) and not (out / LOCK_NAME).exists()
    assert "in use by another run" not in log
    assert_same_run(out, reference)  # weights, n-best average, every logged value: the first run's alone
