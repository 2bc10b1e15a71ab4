"""FunASR's batch types in a real fine-tune (examples/finetune.py, the Trainer, the tiny model): under
`--batch_type length` / `token`, `--batch_size` is the padded budget (fbank frames + text tokens of the longest
example times the examples), every batch obeys it, batches are re-formed every epoch, and every epoch has the
number of batches the Trainer read once. The batches are taken where the Trainer hands them to the training
step (a spy that calls the real step)."""

from __future__ import annotations

import runpy
from collections import defaultdict
from pathlib import Path

import pytest
from helpers import FINETUNE, finetune_args

from funasr_nano_hf.data.featurize import source_lengths
from funasr_nano_hf.training.arguments import parse_args
from funasr_nano_hf.training.trainer import KEYS_FIELD, FunAsrNanoTrainer

pytestmark = pytest.mark.slow

BUDGET = 1500  # fbank frames + text tokens: ~5-10 of the 1-3 s TTS clips per batch


def _train(batch_type: str, model_dir: Path, data_dir: Path, out: Path, monkeypatch, *extra: str):
    """Run examples/finetune.py in this process; returns (trainer, [(epoch, keys) per training step])."""
    steps: list[tuple[int, list[str]]] = []
    trainers: list[FunAsrNanoTrainer] = []
    real_step = FunAsrNanoTrainer.training_step

    def spy(self, model, inputs, num_items_in_batch=None):
        trainers.append(self)
        steps.append((self._batch_sampler.epoch, list(inputs[KEYS_FIELD])))
        return real_step(self, model, inputs, num_items_in_batch)

    monkeypatch.setattr(FunAsrNanoTrainer, "training_step", spy)
    argv = finetune_args(model_dir, data_dir, out, valid=False)[1:]
    argv += ["--batch_type", batch_type, "--batch_size", str(BUDGET), "--sort_size", "12", "--use_cpu", "true"]
    argv += ["--num_workers", "0", "--log_interval", "1", "--warmup_steps", "1", "--early_stopping_patience", "0"]
    runpy.run_path(str(FINETUNE))["main"](argv + list(extra))
    return trainers[0], steps


def _check_epochs(trainer: FunAsrNanoTrainer, steps: list[tuple[int, list[str]]], epochs: int) -> None:
    dataset = trainer.train_dataset
    length = dict(zip(dataset["key"], source_lengths(dataset)))
    by_epoch: dict[int, list[list[str]]] = defaultdict(list)
    for epoch, keys in steps:
        by_epoch[epoch].append(keys)
    assert sorted(by_epoch) == list(range(epochs))
    per_epoch = len(trainer._batch_sampler)
    for epoch, batches in by_epoch.items():
        assert len(batches) == per_epoch, (epoch, [len(b) for b in batches])  # the count the Trainer read
        assert sorted(k for b in batches for k in b) == sorted(length)  # every example once per epoch
        padded = [max(length[k] for k in b) * len(b) for b in batches]
        assert max(padded) <= BUDGET, padded
        assert sum(padded) > 0.5 * BUDGET * len(batches)  # the budget is what sizes them: sorted, greedy
        assert max(len(b) for b in batches) > 1
    compositions = [{frozenset(b) for b in by_epoch[e]} for e in range(epochs)]
    assert all(a != b for a, b in zip(compositions, compositions[1:]))  # re-formed every epoch


def test_length_batches_obey_the_budget_and_change_every_epoch(tiny_original_dir, data_dir, tmp_path, monkeypatch):
    trainer, steps = _train("length", tiny_original_dir, data_dir, tmp_path / "out", monkeypatch, "--max_epoch", "3")
    assert trainer._batch_sampler.batch_type == "length" and trainer._batch_sampler.budget == BUDGET
    _check_epochs(trainer, steps, epochs=3)
    assert trainer.state.global_step == 3 * len(trainer._batch_sampler)


def test_token_batches_with_max_steps(tiny_original_dir, data_dir, tmp_path, monkeypatch):
    """With --max_steps the Trainer runs whole epochs of the fixed count until it reaches the step."""
    trainer, steps = _train("token", tiny_original_dir, data_dir, tmp_path / "out", monkeypatch, "--max_steps", "25")
    per_epoch = len(trainer._batch_sampler)
    assert trainer._batch_sampler.batch_type == "token" and 5 < per_epoch <= 12
    assert trainer.state.global_step == len(steps) == 25
    full = 25 // per_epoch  # whole epochs, then part of the next
    _check_epochs(trainer, [s for s in steps if s[0] < full], epochs=full)
    dataset = trainer.train_dataset
    length = dict(zip(dataset["key"], source_lengths(dataset)))
    assert all(max(length[k] for k in keys) * len(keys) <= BUDGET for _, keys in steps)


def test_max_tokens_is_refused_with_the_remedy():
    base = ["--model_dir", "m", "--train_data", "t.jsonl", "--output_dir", "o", "--use_cpu"]
    with pytest.raises(ValueError, match=r"--max_tokens 6000: removed.*--batch_type token --batch_size 6000"):
        parse_args(base + ["--batch_type", "token", "--max_tokens", "6000"])


def test_token_batches_on_two_ddp_processes(tiny_original_dir, data_dir, tmp_path):
    """`accelerate launch` with 2 processes (DDP on CPU): both ranks fix the same count of batches per epoch
    (formed globally, dealt round-robin), so every epoch ends together, and the run makes epochs x count steps."""
    import re
    import socket
    import sys

    from helpers import REPO, run

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = tmp_path / "out"
    launch = [Path(sys.executable).parent / "accelerate", "launch", "--config_file"]
    launch += [REPO / "examples" / "accelerate" / "ddp.yaml", "--num_processes", "2", "--main_process_port", port]
    extra = ["--batch_type", "token", "--batch_size", str(BUDGET), "--sort_size", "12", "--max_epoch", "2"]
    extra += ["--use_cpu", "true", "--num_workers", "0", "--log_interval", "1", "--early_stopping_patience", "0"]
    extra += ["--log_level", "info"]
    env = {"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    log = run([*launch, *finetune_args(tiny_original_dir, data_dir, out, *extra, valid=False)], env=env)
    counts = re.findall(r"batch_type token: (\d+) batches per epoch on this process over 2 epochs", log)
    assert len(counts) == 2 and counts[0] == counts[1], log[-3000:]  # one line per process, the same count
    per_rank = int(counts[0])
    assert f"Num update steps per epoch = {per_rank}" in log
    logged = [
        int(line.split(" | ")[1].split()[1])
        for line in (out / "train.log").read_text().splitlines()
        if " | loss " in line
    ]
    assert logged == list(range(1, 2 * per_rank + 1))
