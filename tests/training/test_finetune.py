"""End to end: LoRA fine-tune of a tiny Fun-ASR-Nano (built by FunASR's classes) on the TTS test data
(`shared_dir` fixture) with examples/finetune.py in real processes: loss falls, CER from batched generation at every
validation, the adapter reloads and reproduces the CER, the n-best average is written. (kill -9 + --resume
at five points of a run: tests/fault/test_kill_resume.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from helpers import finetune_cmd, run

pytestmark = pytest.mark.slow


RECIPE = (
    "--max_epoch 3 --per_device_train_batch_size 4 --per_device_eval_batch_size 6 --validate_interval 12 "
    "--save_checkpoint_interval 12 --log_interval 4 --warmup_steps 2 --lr 5e-3 --lora_r 16 --eval_max_new_tokens 8 "
    "--keep_nbest_models 2 --avg_nbest_model 2 --early_stopping_patience 0 --use_cpu --seed 7"
).split()


def _history(out: Path) -> list[dict]:
    states = sorted(out.glob("checkpoint-*/trainer_state.json"), key=lambda p: int(p.parent.name.split("-")[1]))
    return json.loads(states[-1].read_text())["log_history"]


@pytest.fixture(scope="module")
def full_run(tiny_original_dir, data_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ft_full") / "out"
    run(finetune_cmd(tiny_original_dir, data_dir, out, *RECIPE))
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
    from funasr_nano_hf.inference import transcribe_featurized

    assert (full_run / "model_avg" / "adapter_model.safetensors").is_file()
    nbest = json.loads((full_run / "nbest.json").read_text())
    assert len(nbest["averaged"]) == 2
    final_metrics = json.loads((full_run / "all_results.json").read_text())

    base, processor = load_pretrained(tiny_original_dir)
    model = PeftModel.from_pretrained(base, str(full_run / "final")).eval()
    config = yaml.safe_load((full_run / "config.yaml").read_text())
    dataset, _ = build_dataset(config["data"]["valid_data"], processor, DataConfig())
    predictions = [d.text for d in transcribe_featurized(model, processor, dataset, batch_size=6, max_new_tokens=8)]
    assert compute_cer(predictions, list(dataset["text"]))["cer"] == pytest.approx(final_metrics["eval_cer"], abs=1e-9)
