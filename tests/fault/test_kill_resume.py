"""kill -9 at five points of a real fine-tuning process, then `--resume`: the final weights, the n-best
average and every logged number equal the uninterrupted run's, bit for bit (CPU, one thread, same seed).

The kill is a real SIGKILL, sent by the process to itself at a named point (FUNASR_NANO_HF_FAULT, see
funasr_nano_hf/testing/faults.py); 2 epochs x 2 steps, a checkpoint + evaluation every step.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from finetune_runs import LAST_STEP, assert_same_run, finetune_cmd, run, weights

from funasr_nano_hf.training.checkpointing import COMPLETE_MARKER

pytestmark = pytest.mark.slow

KILLED = -9


def _kill_then_resume(
    tiny_original_dir, fault_data, out, fault: str, resumes_from: int, before_resume=None, extra=()
) -> str:
    cmd = finetune_cmd(tiny_original_dir, fault_data, out, *extra)
    run(cmd, fault=fault, returncode=KILLED)
    assert not (out / "final").exists()
    checkpoints = sorted(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*"))
    assert checkpoints and max(checkpoints) == resumes_from, checkpoints
    if before_resume:
        before_resume()
    log = run([*cmd, "--resume", "true"])
    assert f"resuming from {out / f'checkpoint-{resumes_from}'}" in log
    return log


@pytest.mark.parametrize(
    "fault, resumes_from",
    [
        # after backward of step 4, before its optimizer update: resume mid-epoch 1 from checkpoint-3 (the
        # sampler skips the epoch's first batch, the RNG state is restored)
        pytest.param("step:4", 3, id="mid_step"),
        # between the eval-loss pass and the CER decoding of step 2's evaluation: resume mid-epoch 0
        pytest.param("eval:2", 1, id="mid_evaluation"),
        # at the end of epoch 0 (checkpoint-2 saved): resume at the epoch boundary
        pytest.param("epoch_end:1", 2, id="between_epochs"),
    ],
)
def test_kill(tiny_original_dir, fault_data, reference, tmp_path, fault, resumes_from):
    out = tmp_path / "out"
    _kill_then_resume(tiny_original_dir, fault_data, out, fault, resumes_from=resumes_from)
    assert_same_run(out, reference)


def test_kill_during_checkpoint_save(tiny_original_dir, fault_data, reference, tmp_path):
    """Every file of checkpoint-3 written, not yet published: no checkpoint-3 is visible, only the staging
    folder, which the resumed run removes. A torn checkpoint-9 (a complete one minus its marker) planted
    next to it is ignored: resume takes the newest COMPLETE checkpoint."""
    out = tmp_path / "out"
    stale: list[Path] = []

    def plant_torn():
        assert not (out / "checkpoint-3").exists(), "a checkpoint became visible before it was complete"
        staged = list(out.glob(".tmp-checkpoint-3-*"))  # named after the killed run's id (output_dir lock)
        assert len(staged) == 1 and (staged[0] / "checkpoint-3" / "adapter_model.safetensors").is_file()
        stale.append(staged[0])
        shutil.copytree(out / "checkpoint-2", out / "checkpoint-9")
        (out / "checkpoint-9" / COMPLETE_MARKER).unlink()

    log = _kill_then_resume(tiny_original_dir, fault_data, out, "save:3", resumes_from=2, before_resume=plant_torn)
    assert f"ignoring checkpoint {out / 'checkpoint-9'}: no {COMPLETE_MARKER}" in log
    assert f"removing {stale[0]}" in log
    assert "took over the stale lock" in log and "is not running" in log  # the killed run's lock
    shutil.rmtree(out / "checkpoint-9")  # not part of the comparison
    assert_same_run(out, reference)


def test_kill_during_nbest_averaging(tiny_original_dir, fault_data, reference, tmp_path):
    """Training done, the n-best average half written: no model_avg is visible; the resumed run has no step
    left to train, averages again and writes final/."""
    out = tmp_path / "out"

    def check_torn_average():
        assert not (out / "model_avg").exists()
        assert [p.name for p in out.glob(".tmp-model_avg*/model_avg") if p.is_dir()] == ["model_avg"]

    _kill_then_resume(
        tiny_original_dir, fault_data, out, "average:1", resumes_from=LAST_STEP, before_resume=check_torn_average
    )
    assert_same_run(out, reference)


def test_kill_with_a_trained_adaptor(tiny_original_dir, fault_data, tmp_path):
    """LoRA + a trained adaptor (FunASR's default; saved with the adapter as peft ``modules_to_save``): kill -9
    mid-step, ``--resume``, and the run equals its uninterrupted twin -- the adaptor's training included."""
    extra = ("--freeze_audio_adaptor", "false")
    reference = tmp_path / "reference"
    run(finetune_cmd(tiny_original_dir, fault_data, reference, *extra))
    out = tmp_path / "out"
    _kill_then_resume(tiny_original_dir, fault_data, out, "step:4", resumes_from=3, extra=extra)
    assert_same_run(out, reference)
    assert any("multi_modal_projector" in key for key in weights(out / "final"))
