"""Guide knobs map onto TrainingArguments unless the TrainingArguments field is given itself."""

from __future__ import annotations

import pytest

from funasr_nano_hf.training.arguments import parse_args

BASE = ["--model_dir", "m", "--train_data", "t.jsonl", "--output_dir", "o", "--use_cpu"]


def test_guide_defaults():
    model, data, finetune, training = parse_args(BASE)
    assert training.num_train_epochs == 10 and training.logging_steps == 10
    assert training.eval_steps == 1000 and training.save_steps == 1000
    assert training.learning_rate == 1e-4 and training.weight_decay == 1e-4 and training.warmup_steps == 500
    assert training.per_device_train_batch_size == 4 and training.dataloader_num_workers == 4
    assert training.gradient_accumulation_steps == 1 and training.max_grad_norm == 5.0
    assert (model.lora_r, model.lora_alpha, model.lora_dropout) == (8, 16, 0.1)
    assert (finetune.keep_nbest_models, finetune.avg_nbest_model, finetune.early_stopping_patience) == (5, 3, 3)
    assert (data.max_source_length, data.max_target_length, data.batch_type) == (2000, 200, "example")


def test_guide_names_and_explicit_training_arguments():
    *_, training = parse_args(BASE + ["--max_epoch", "3", "--lr", "2e-4", "--batch_size", "8", "--accum_grad", "2"])
    assert (training.num_train_epochs, training.learning_rate) == (3, 2e-4)
    assert (training.per_device_train_batch_size, training.gradient_accumulation_steps) == (8, 2)
    *_, training = parse_args(BASE + ["--max_epoch", "3", "--num_train_epochs", "5", "--learning_rate", "3e-4"])
    assert (training.num_train_epochs, training.learning_rate) == (5, 3e-4)


def test_yaml_config_and_cli_override(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("model_dir: m\ntrain_data: [t.jsonl]\noutput_dir: o\nlr: 5.0e-4\nlora_r: 4\nuse_cpu: true\n")
    model, _, _, training = parse_args(["--config", str(config), "--lora_r", "32"])
    assert training.learning_rate == 5e-4 and model.lora_r == 32
    config.write_text("model_dir: m\ntrain_data: [t.jsonl]\nno_such_option: 1\n")
    with pytest.raises(ValueError, match="no_such_option"):
        parse_args(["--config", str(config)])
