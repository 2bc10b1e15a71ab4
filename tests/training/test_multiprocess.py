"""Real multi-process training on CPU: 2-process DDP matches 1 process with the same global batch;
DeepSpeed ZeRO-2 (train + resume) and ZeRO-3 (train + save a loadable adapter) through accelerate."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FINETUNE = str(REPO / "examples" / "finetune.py")
BIN = Path(sys.executable).parent

pytestmark = pytest.mark.slow


def _args(model_dir, data_dir, out, batch_size, *extra):
    return [FINETUNE, "--model_dir", str(model_dir), "--train_data", str(data_dir / "train.jsonl"),
            "--valid_data", str(data_dir / "valid.jsonl"), "--output_dir", str(out), "--max_epoch", "1",
            "--batch_size", str(batch_size), "--validate_interval", "3", "--save_checkpoint_interval", "3",
            "--log_interval", "1", "--warmup_steps", "1", "--lr", "5e-3", "--eval_max_new_tokens", "4",
            "--lora_dropout", "0", "--early_stopping_patience", "0", "--dataloader_num_workers", "0", *extra]


def _run(cmd, timeout=900):
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    tail = (result.stdout[-2000:] + result.stderr[-6000:])
    assert result.returncode == 0, tail
    return result.stdout + result.stderr


def _losses(out: Path) -> list[tuple[int, float]]:
    state = max(out.glob("checkpoint-*/trainer_state.json"), key=lambda p: int(p.parent.name.split("-")[1]))
    return [(h["step"], h["loss"]) for h in json.loads(state.read_text())["log_history"] if "loss" in h]


def _accelerate_deepspeed(config: str) -> list[str]:
    return [str(BIN / "accelerate"), "launch", "--use_deepspeed", "--deepspeed_config_file",
            str(REPO / "examples" / "deepspeed" / config), "--num_processes", "1", "--num_machines", "1",
            "--mixed_precision", "no", "--dynamo_backend", "no"]


def test_ddp_two_processes_match_one_process(tiny_original_dir, data_dir, tmp_path):
    two, one = tmp_path / "two", tmp_path / "one"
    log = _run([str(BIN / "torchrun"), "--nproc_per_node", "2", *_args(tiny_original_dir, data_dir, two, 4, "--use_cpu")])
    assert "world_size=2" in log or "rank1" in log or (two / "train.log").is_file()
    _run([sys.executable, *_args(tiny_original_dir, data_dir, one, 8, "--use_cpu")])
    ddp, single = _losses(two), _losses(one)
    assert [s for s, _ in ddp] == [s for s, _ in single] == list(range(1, 7))  # 48 examples / global batch 8
    # Same global batches (the sampler deals per-device batches to ranks); DDP averages gradients of the
    # token-normalised losses. Differences are float reduction order only.
    for (_, a), (_, b) in zip(ddp, single):
        assert a == pytest.approx(b, rel=1e-4)


def test_zero2_trains_and_resumes(tiny_original_dir, data_dir, tmp_path):
    out = tmp_path / "z2"
    _run([*_accelerate_deepspeed("zero2.json"), *_args(tiny_original_dir, data_dir, out, 8)])
    assert (out / "checkpoint-6" / "global_step6").is_dir()  # a DeepSpeed checkpoint
    first = _losses(out)
    shutil.rmtree(out / "final")
    _run([*_accelerate_deepspeed("zero2.json"),
          *_args(tiny_original_dir, data_dir, out, 8, "--resume", "true", "--max_epoch", "2")])
    resumed = _losses(out)
    assert resumed[:6] == first and [s for s, _ in resumed] == list(range(1, 13))
    assert (out / "final" / "adapter_model.safetensors").is_file()


def test_zero3_trains_and_saves_a_loadable_adapter(tiny_original_dir, data_dir, tmp_path):
    from peft import PeftModel

    from funasr_nano_hf import load_pretrained

    out = tmp_path / "z3"
    _run([*_accelerate_deepspeed("zero3.json"), *_args(tiny_original_dir, data_dir, out, 8)])
    assert len(_losses(out)) == 6
    base, _ = load_pretrained(tiny_original_dir)
    model = PeftModel.from_pretrained(base, str(out / "final"))
    lora = [n for n, _ in model.named_parameters() if "lora_A" in n]
    assert lora and all(".language_model." in n for n in lora)
