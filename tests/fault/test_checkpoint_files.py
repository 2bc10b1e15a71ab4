"""Checkpoint folders on disk: hostile or broken files are refused, by name, before anything loads them;
torn folders are never taken for complete ones; no trust_remote_code anywhere."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from finetune_runs import finetune_cmd, run
from helpers import REPO, RunsCode

from funasr_nano_hf import CheckpointError
from funasr_nano_hf.training.checkpointing import (
    COMPLETE_MARKER,
    atomic_directory,
    checkpoint_problem,
    mark_complete,
    newest_complete_checkpoint,
    remove_directory,
    remove_stale_temporaries,
    vet_checkpoint,
)

pytestmark = pytest.mark.slow  # the checkpoints come from a real (tiny) fine-tuning run


@pytest.fixture
def checkpoint(reference, tmp_path) -> Path:
    """A copy of a complete checkpoint of the reference run (LoRA adapter, optimizer, scheduler, RNG)."""
    return Path(shutil.copytree(reference / "checkpoint-2", tmp_path / "out" / "checkpoint-2"))


# ---- hostile files -------------------------------------------------------------------------------------
def test_resume_refuses_a_checkpoint_file_that_would_run_code(tiny_original_dir, fault_data, checkpoint, tmp_path):
    """A checkpoint folder from elsewhere, complete by its marker, whose optimizer.pt is a pickle that runs a
    command: `--resume` stops with an error naming the file, and the command never ran."""
    pwned = tmp_path / "pwned"
    torch.save({"state": {}, "param_groups": [], "payload": RunsCode(pwned)}, checkpoint / "optimizer.pt")
    mark_complete(checkpoint)
    output = run([*finetune_cmd(tiny_original_dir, fault_data, checkpoint.parent), "--resume", "true"], returncode=1)
    assert f"CheckpointError: {checkpoint / 'optimizer.pt'}: refused: it references posix.system" in output, output[
        -3000:
    ]
    assert not pwned.exists()


@pytest.mark.parametrize("name", ["optimizer.pt", "scheduler.pt", "rng_state.pth"])
def test_vet_refuses_pickles_that_would_run_code(checkpoint, tmp_path, name):
    pwned = tmp_path / "pwned"
    torch.save({"payload": RunsCode(pwned)}, checkpoint / name)
    with pytest.raises(
        CheckpointError,
        match=rf"{re.escape(str(checkpoint / name))}: refused: it references "
        r"posix\.system, loading it could run code",
    ):
        vet_checkpoint(checkpoint)
    assert not pwned.exists()


# ---- broken files ---------------------------------------------------------------------------------------
def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize(
    "name, damage, message",
    [
        ("adapter_model.safetensors", _truncate, "truncated or corrupt safetensors"),
        ("adapter_model.safetensors", lambda p: p.write_bytes(b"\x07" * p.stat().st_size), "truncated or corrupt"),
        ("optimizer.pt", _truncate, "truncated or corrupt"),
        ("rng_state.pth", lambda p: p.write_bytes(b"not a pickle"), "refused: not a plain tensor file, corrupt"),
        ("trainer_state.json", _truncate, "unreadable JSON"),
        ("adapter_config.json", lambda p: p.write_text("{"), "unreadable JSON"),
        ("trainer_state.json", Path.unlink, "missing"),
    ],
)
def test_vet_names_the_broken_file(checkpoint, name, damage, message):
    vet_checkpoint(checkpoint)  # intact: numpy RNG state and all
    damage(checkpoint / name)
    with pytest.raises(CheckpointError, match=rf"{re.escape(str(checkpoint / name))}: {message}"):
        vet_checkpoint(checkpoint)


# ---- torn folders ---------------------------------------------------------------------------------------
def test_only_complete_checkpoints_count(checkpoint):
    out = checkpoint.parent
    assert checkpoint_problem(checkpoint) is None
    for step, damage in (
        (3, lambda f: (f / COMPLETE_MARKER).unlink()),
        (4, lambda f: (f / "optimizer.pt").unlink()),
        (5, lambda f: _truncate(f / "adapter_model.safetensors")),
    ):
        folder = Path(shutil.copytree(checkpoint, out / f"checkpoint-{step}"))
        damage(folder)
    assert checkpoint_problem(out / "checkpoint-3").startswith(f"no {COMPLETE_MARKER}")
    assert checkpoint_problem(out / "checkpoint-4") == "optimizer.pt is missing"
    assert re.fullmatch(
        r"adapter_model\.safetensors has \d+ bytes, \d+ were written", checkpoint_problem(out / "checkpoint-5")
    )
    assert newest_complete_checkpoint(out) == str(checkpoint)
    remove_directory(checkpoint)
    assert newest_complete_checkpoint(out) is None and not list(out.glob(".tmp-*"))


def test_resume_with_only_torn_checkpoints_stops_instead_of_starting_over(checkpoint):
    """finetune.py --resume: torn checkpoints only (e.g. written before atomic checkpoints) -> an error that
    lists them and says how to proceed, not a fresh run over them; nothing at all -> a fresh start."""
    import importlib.util
    from types import SimpleNamespace

    spec = importlib.util.spec_from_file_location("finetune_example", REPO / "examples" / "finetune.py")
    finetune = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(finetune)
    (checkpoint / COMPLETE_MARKER).unlink()
    with pytest.raises(
        RuntimeError,
        match=rf"no complete checkpoint in .*checkpoint-2: no {COMPLETE_MARKER}.*"
        r"mark_complete",
    ):
        finetune._resume_point(SimpleNamespace(resume=True), checkpoint.parent)
    mark_complete(checkpoint)
    assert finetune._resume_point(SimpleNamespace(resume=True), checkpoint.parent) == str(checkpoint)
    remove_directory(checkpoint)
    assert finetune._resume_point(SimpleNamespace(resume=True), checkpoint.parent) is None


def test_atomic_directory_publishes_whole_or_nothing(tmp_path):
    target = tmp_path / "model"
    with atomic_directory(target, complete_marker=True) as staged:
        (staged / "a.bin").write_bytes(b"12345")
        assert not target.exists()
    assert json.loads((target / COMPLETE_MARKER).read_text()) == {"files": {"a.bin": 5}}
    with pytest.raises(RuntimeError), atomic_directory(target) as staged:  # a failure keeps the old folder
        (staged / "b.bin").write_bytes(b"x")
        raise RuntimeError("disk full")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"] and (target / "a.bin").is_file()
    with atomic_directory(target) as staged:  # replacing an existing folder
        (staged / "c.bin").write_bytes(b"x")
    assert sorted(p.name for p in target.iterdir()) == ["c.bin"]
    (tmp_path / ".tmp-checkpoint-7" / "checkpoint-7").mkdir(parents=True)  # what a kill during a save leaves
    assert remove_stale_temporaries(tmp_path) == [tmp_path / ".tmp-checkpoint-7"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_no_trust_remote_code_anywhere():
    """Nothing we ship asks transformers to run code from a model folder or the Hub."""
    sources = [
        p
        for folder in ("funasr_nano_hf", "examples", "scripts", "benchmarks")
        if (REPO / folder).is_dir()
        for p in (REPO / folder).rglob("*")
        if p.suffix in (".py", ".sh", ".yaml", ".json")
    ]
    assert len(sources) > 20
    # Turning it on in any form (a keyword, a YAML/JSON key, a CLI flag); dropping a caller's `trust_remote_code`
    # keyword (peft passes one to our original-folder loader, which runs no code) is allowed.
    enabling = re.compile(r"""trust_remote_code["']?\s*[=:]\s*(True|true|1)|--trust[_-]remote[_-]code""")
    offenders = [str(p.relative_to(REPO)) for p in sources if enabling.search(p.read_text(errors="ignore"))]
    assert offenders == []
    assert enabling.search("AutoModel.from_pretrained(x, trust_remote_code=True)")  # the check can fail
