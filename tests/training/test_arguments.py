"""Guide knobs map onto TrainingArguments unless the TrainingArguments field is given itself."""

from __future__ import annotations

from dataclasses import fields
from types import SimpleNamespace

import pytest
import yaml

from funasr_nano_hf.training.arguments import check_launched_world_size, parse_args, save_resolved_config

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


def test_data_config_fields_are_defined_once():
    """DataArguments takes DataConfig's defaults and help texts; DataConfig.from_args reads them back, with
    `num_proc` under its option name `--feature_num_proc`."""
    from funasr_nano_hf.data.featurize import DataConfig
    from funasr_nano_hf.training.arguments import DataArguments

    _, data, _, _ = parse_args(BASE)
    assert DataConfig.from_args(data) == DataConfig()
    option_fields = {f.name: f for f in fields(DataArguments)}
    for config_field in fields(DataConfig):
        if config_field.name == "cache_dir":  # not a fine-tuning option
            continue
        option = option_fields[DataConfig.option_name(config_field.name)]
        assert (option.default, option.metadata) == (config_field.default, config_field.metadata)
    _, data, _, _ = parse_args(BASE + ["--feature_num_proc", "3", "--max_source_length", "500", "--on_bad_data=skip"])
    config = DataConfig.from_args(data)
    assert (config.num_proc, config.max_source_length, config.on_bad_data) == (3, 500, "skip")


def test_evaluation_defaults_follow_the_validation_data():
    *_, training = parse_args(BASE + ["--valid_data", "v.jsonl"])
    assert not training.load_best_model_at_end and training.metric_for_best_model == "eval_cer"
    assert training.greater_is_better is False and training.eval_strategy == "steps"
    *_, training = parse_args(BASE + ["--valid_data", "v.jsonl", "--metric_for_best_model", "eval_wer_like"])
    assert training.greater_is_better is True
    *_, training = parse_args(BASE)
    assert training.eval_strategy == "no" and not training.load_best_model_at_end


def test_launched_world_size_must_match(monkeypatch):
    """e.g. `accelerate launch --num_processes 2` on a CPU machine without --use_cpu: N separate trainings."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(RuntimeError, match="launched as 2 processes but the Trainer sees 1"):
        check_launched_world_size(SimpleNamespace(world_size=1))
    check_launched_world_size(SimpleNamespace(world_size=2))


def test_resolved_config_has_every_group(tmp_path):
    args = parse_args(BASE + ["--feature_num_proc", "2"])
    save_resolved_config(tmp_path / "config.yaml", *args)
    resolved = yaml.safe_load((tmp_path / "config.yaml").read_text(encoding="utf-8"))
    assert list(resolved) == ["model", "data", "finetune", "training"]
    assert resolved["data"]["feature_num_proc"] == 2 and resolved["training"]["learning_rate"] == 1e-4
