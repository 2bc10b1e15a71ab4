"""examples/finetune.py as the fault tests run it: a tiny model, 2 epochs x 2 steps, a checkpoint and an
evaluation every step, real processes, at most one injected fault (funasr_nano_hf.testing.faults)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import helpers
import torch
from safetensors.torch import load_file

LAST_STEP = 4  # 8 examples / batch 4 = 2 steps per epoch, 2 epochs
TIMING = ("_runtime", "_per_second")  # wall-clock values: the only logged numbers allowed to differ


# A checkpoint and an evaluation every step; eval_loss falls every step, so the best model (what final/ holds)
# is the last one, not an early one.
FAULT_RUN = (
    "--max_epoch 2 --per_device_train_batch_size 4 --per_device_eval_batch_size 2 --validate_interval 1 "
    "--save_checkpoint_interval 1 --log_interval 1 --warmup_steps 1 --lr 5e-3 --lora_r 16 --eval_max_new_tokens 2 "
    "--keep_nbest_models 2 --avg_nbest_model 2 --early_stopping_patience 0 --metric_for_best_model eval_loss "
    "--use_cpu --seed 7 --num_workers 0 --disable_tqdm true"
).split()


def finetune_cmd(model_dir: Path, data_dir: Path, out: Path, *extra: str) -> list[str]:
    """The fault tests' run; `extra` comes last, so it overrides (argparse keeps the last value)."""
    return helpers.finetune_cmd(model_dir, data_dir, out, *FAULT_RUN, *extra)


def run(cmd: list[str], fault: str | None = None, returncode: int = 0, timeout: int = 300) -> str:
    """Run `cmd` (with FUNASR_NANO_HF_FAULT=`fault` if given); its exit status must be `returncode`
    (-9: killed by the injected SIGKILL). Returns stdout + stderr."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    env.pop("FUNASR_NANO_HF_FAULT", None)
    if fault:
        env["FUNASR_NANO_HF_FAULT"] = fault
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    output = result.stdout + result.stderr
    assert result.returncode == returncode, f"exit {result.returncode} (expected {returncode})\n{output[-6000:]}"
    return output


def weights(folder: Path) -> dict[str, torch.Tensor]:
    files = sorted(folder.glob("*.safetensors"))
    assert files, f"no weights in {folder}"
    return {f"{f.name}:{k}": v for f in files for k, v in load_file(str(f)).items()}


def logged(out: Path, step: int = LAST_STEP) -> dict:
    """The run's trainer state at `step`: every logged value except wall-clock timings."""
    state = json.loads((out / f"checkpoint-{step}" / "trainer_state.json").read_text())
    state["log_history"] = [
        {k: v for k, v in entry.items() if not k.endswith(TIMING)} for entry in state["log_history"]
    ]
    state.pop("best_model_checkpoint")  # an absolute path into the run's own folder
    return state


def final_metrics(out: Path) -> dict:
    metrics = json.loads((out / "all_results.json").read_text())
    return {k: v for k, v in metrics.items() if k.startswith("eval_") and not k.endswith(TIMING)}


def nbest(out: Path) -> tuple[list, list]:
    summary = json.loads((out / "nbest.json").read_text())
    return [e["step"] for e in summary["kept"]], [e["step"] for e in summary["averaged"]]


def assert_same_run(out: Path, reference: Path) -> None:
    """Bit-identical: final and averaged weights, every logged loss / grad norm / LR / eval metric."""
    for folder in ("final", "model_avg"):
        ours, ref = weights(out / folder), weights(reference / folder)
        assert ours.keys() == ref.keys(), folder
        assert all(torch.equal(ours[k], ref[k]) for k in ref), f"{folder}: weights differ"
    assert logged(out) == logged(reference)
    assert final_metrics(out) == final_metrics(reference)
    assert nbest(out) == nbest(reference)
    assert not list(out.glob(".tmp-*")), "staging leftovers after the resumed run"
