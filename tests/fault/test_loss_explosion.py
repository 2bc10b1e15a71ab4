"""A run whose loss explodes ends with a named warning (train.log) and counts in the final metrics."""

from __future__ import annotations

import json

import pytest
from finetune_runs import finetune_cmd, run
from transformers import TrainerControl, TrainerState, TrainingArguments

from funasr_nano_hf.training.callbacks import LossExplosionCallback


def _feed(callback: LossExplosionCallback, logs: list[dict]) -> None:
    args = TrainingArguments(output_dir="unused", learning_rate=1e6, report_to=[])
    state = TrainerState()
    for step, entry in enumerate(logs, 1):
        state.global_step = step
        callback.on_log(args, state, TrainerControl(), logs=entry)


def test_watch_flags_a_rise_and_a_collapse_not_noise():
    calm = LossExplosionCallback()
    _feed(calm, [{"loss": v, "grad_norm": 1.0} for v in (5.0, 3.0, 4.0, 0.01, 0.5, 0.9)])
    assert calm.metrics() == {} and calm.summary() == ""  # 0.9 after 0.01: under 10 x the floor 0.1
    wild = LossExplosionCallback()
    _feed(wild, [{"loss": 5.0, "grad_norm": 2.0}, {"loss": 80.0, "grad_norm": 0.0}, {"loss": 1e4, "grad_norm": 0.0}])
    assert wild.metrics() == {
        "train_loss_explosion_steps": 2,
        "train_loss_explosion_first_step": 2,
        "train_zero_grad_norm_steps": 2,
        "train_zero_grad_norm_first_step": 2,
    }
    assert "first: step 2" in wild.summary()


@pytest.mark.slow
def test_lr_1e6_run_says_so(tiny_original_dir, fault_data, tmp_path):
    """lr 1e6 with --on_nonfinite skip: the run "succeeds" (exit 0), and says in train.log and the final metrics
    that its loss exploded or its gradients died."""
    out = tmp_path / "out"
    run(finetune_cmd(tiny_original_dir, fault_data, out, "--lr", "1e6", "--on_nonfinite", "skip"))
    log = (out / "train.log").read_text()
    metrics = json.loads((out / "all_results.json").read_text())
    flagged = {key for key in metrics if key.startswith(("train_loss_explosion", "train_zero_grad_norm"))}
    assert flagged, metrics
    assert "loss explosion at step" in log or "gradient norm collapsed to 0 at step" in log
    assert "training ended, but the" in log
