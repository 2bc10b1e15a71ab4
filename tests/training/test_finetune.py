"""End to end: LoRA fine-tune of a tiny Fun-ASR-Nano (built by FunASR's classes) on the TTS test data
(`shared_dir` fixture) with examples/finetune.py in real processes: loss falls, CER from batched generation at every
validation, the adapter reloads and reproduces the CER, the n-best average is written. (kill -9 + --resume
at five points of a run: tests/fault/test_kill_resume.py.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[2]
FINETUNE = REPO / "examples" / "finetune.py"

pytestmark = pytest.mark.slow


def _args(model_dir, data_dir, out, *extra) -> list[str]:
    return [
        sys.executable, str(FINETUNE), "--model_dir", str(model_dir),
        "--train_data", str(data_dir / "train.jsonl"), "--valid_data", str(data_dir / "valid.jsonl"),
        "--output_dir", str(out), "--max_epoch", "3", "--per_device_train_batch_size", "4",
        "--per_device_eval_batch_size", "6", "--validate_interval", "12", "--save_checkpoint_interval", "12",
        "--log_interval", "4", "--warmup_steps", "2", "--lr", "5e-3", "--lora_r", "16", "--eval_max_new_tokens", "8",
        "--keep_nbest_models", "2", "--avg_nbest_model", "2", "--early_stopping_patience", "0",
        "--use_cpu", "--seed", "7", *extra,
    ]


def _run(args, timeout=900) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    result = subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result


def _history(out: Path) -> list[dict]:
    states = sorted(out.glob("checkpoint-*/trainer_state.json"), key=lambda p: int(p.parent.name.split("-")[1]))
    return json.loads(states[-1].read_text())["log_history"]


@pytest.fixture(scope="module")
def full_run(tiny_original_dir, data_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ft_full") / "out"
    _run(_args(tiny_original_dir, data_dir, out))
    return out


def test_loss_falls_and_cer_each_validation(full_run):
    history = _history(full_run)
    losses = [h["loss"] for h in history if "loss" in h]
    assert losses[-1] < losses[0] - 1.0, losses
    evals = [h for h in history if "eval_loss" in h]
    assert [h["step"] for h in evals] == [12, 24, 36]
    assert all(0 <= h["eval_cer"] < 10 for h in evals)
    log = (full_run / "train.log").read_text()
    assert "eval_cer" in log and "funasr_nano_hf.mixed_v1" in log
    assert (full_run / "curves.png").stat().st_size > 1000
    assert (full_run / "config.yaml").is_file()


def test_outputs_average_and_adapter_reload_reproduces_cer(full_run, tiny_original_dir):
    from peft import PeftModel

    from funasr_nano_hf import load_pretrained
    from funasr_nano_hf.data.featurize import DataConfig, build_dataset
    from funasr_nano_hf.evaluation import compute_cer

    assert (full_run / "model_avg" / "adapter_model.safetensors").is_file()
    nbest = json.loads((full_run / "nbest.json").read_text())
    assert len(nbest["averaged"]) == 2
    final_metrics = json.loads((full_run / "all_results.json").read_text())

    base, processor = load_pretrained(tiny_original_dir)
    model = PeftModel.from_pretrained(base, str(full_run / "final")).eval()
    config = yaml.safe_load((full_run / "config.yaml").read_text())
    dataset, _ = build_dataset(config["data"]["valid_data"], processor, DataConfig())
    predictions = _generate(model, processor, dataset)
    assert compute_cer(predictions, list(dataset["text"]))["cer"] == pytest.approx(final_metrics["eval_cer"], abs=1e-9)


def _generate(model, processor, dataset) -> list[str]:
    from funasr_nano_hf.data.collator import FunAsrNanoCollator

    collate = FunAsrNanoCollator(pad_token_id=processor.tokenizer.pad_token_id, for_generation=True)
    batch = collate(list(dataset))
    with torch.no_grad():
        ids = model.generate(**batch, max_new_tokens=8, do_sample=False)
    return processor.batch_decode_transcripts(ids[:, batch["input_ids"].shape[1] :])
