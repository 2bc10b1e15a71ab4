"""Options: guide names are aliases of TrainingArguments fields, FunASR's `++section.key=value` / dotted / nested YAML
forms map onto them, the command line wins over the file, --help shows the defaults used, config.yaml round-trips."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, fields
from types import SimpleNamespace

import pytest
import yaml
from helpers import REPO

from funasr_nano_hf.training.arguments import (
    OptionError,
    check_launched_world_size,
    option_names,
    parse_args,
    save_resolved_config,
)
from funasr_nano_hf.training.funasr_options import FUNASR_KEYS, Mapped

BASE = ["--model_dir", "m", "--train_data", "t.jsonl", "--output_dir", "o", "--use_cpu"]

# The guide's method 3 (docs/finetune_guide_zh.md, "方法3"), after the shell: what the script receives.
GUIDE_OVERRIDES = [
    "++model=models/Fun-ASR-Nano-2512",
    "++train_data_set_list=data/train.jsonl",
    "++valid_data_set_list=data/valid.jsonl",
    "++output_dir=exp/funasr_nano_finetune",
    "++dataset_conf.batch_size=4",
    "++dataset_conf.batch_type=example",
    "++dataset_conf.num_workers=4",
    "++train_conf.max_epoch=10",
    "++train_conf.log_interval=10",
    "++train_conf.resume=true",
    "++train_conf.validate_interval=1000",
    "++train_conf.save_checkpoint_interval=1000",
    "++train_conf.keep_nbest_models=5",
    "++train_conf.avg_nbest_model=3",
    "++train_conf.early_stopping_patience=3",
    "++optim_conf.lr=0.0001",
    "++optim_conf.weight_decay=0.0001",
    "++scheduler_conf.warmup_steps=500",
    "++llm_conf.use_lora=true",
    "++llm_conf.lora_conf.r=8",
    "++llm_conf.lora_conf.lora_alpha=16",
    '++llm_conf.lora_conf.target_modules=["q_proj", "v_proj", "k_proj", "o_proj"]',
    "++llm_conf.lora_conf.lora_dropout=0.1",
    "++llm_conf.llm_dtype=fp16",
]


def _resolved(args) -> dict:
    """Every resolved option (the --config file that was read aside)."""
    model, data, finetune, training = args
    finetune = {k: v for k, v in asdict(finetune).items() if k != "config"}
    return {"model": asdict(model), "data": asdict(data), "finetune": finetune, "training": training.to_dict()}


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


def test_guide_names_are_aliases_of_training_arguments():
    _, data, finetune, training = parse_args(
        BASE + ["--max_epoch", "3", "--lr", "2e-4", "--batch_size", "8", "--accum_grad", "2"]
    )
    assert (training.num_train_epochs, training.learning_rate) == (3, 2e-4)
    assert (training.per_device_train_batch_size, training.gradient_accumulation_steps) == (8, 2)
    _, data, finetune, training = parse_args(BASE + ["--num_train_epochs", "5", "--learning_rate", "3e-4"])
    assert (training.num_train_epochs, finetune.max_epoch) == (5, 5)  # both spellings hold the value used
    assert (training.learning_rate, finetune.lr) == (3e-4, 3e-4)
    _, data, _, training = parse_args(BASE + ["--per_device_train_batch_size", "6"])
    assert (training.per_device_train_batch_size, data.batch_size) == (6, 6)
    with pytest.raises(OptionError, match="--max_epoch 3 and --num_train_epochs 5.0 set the same option"):
        parse_args(BASE + ["--max_epoch", "3", "--num_train_epochs", "5"])


def test_yaml_config_and_cli_override(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("model_dir: m\ntrain_data: [t.jsonl]\noutput_dir: o\nlr: 5.0e-4\nlora_r: 4\nuse_cpu: true\n")
    model, _, _, training = parse_args(["--config", str(config), "--lora_r", "32"])
    assert training.learning_rate == 5e-4 and model.lora_r == 32
    config.write_text("model_dir: m\ntrain_data: [t.jsonl]\nlerning_rate: 1\n")
    with pytest.raises(OptionError, match=r"unknown option 'lerning_rate' \(did you mean learning_rate\?\)"):
        parse_args(["--config", str(config)])


def test_command_line_wins_over_the_file_whatever_the_spelling(tmp_path):
    """examples/train.sh: --config lora.yaml (per_device_train_batch_size: 4), then --batch_size 2 on the command
    line."""
    lora = REPO / "examples" / "configs" / "lora.yaml"
    assert "per_device_train_batch_size: 4" in lora.read_text()
    _, data, _, training = parse_args(["--config", str(lora), "--batch_size", "2", "--use_cpu"])
    assert (training.per_device_train_batch_size, data.batch_size) == (2, 2)
    config = tmp_path / "c.yaml"
    config.write_text("model_dir: m\ntrain_data: t.jsonl\nnum_train_epochs: 5\ntrain_conf: {log_interval: 7}\n")
    *_, training = parse_args(["--config", str(config), "--max_epoch", "2", "++train_conf.log_interval=3"])
    assert (training.num_train_epochs, training.logging_steps) == (2, 3)
    *_, training = parse_args(["--config", str(config), "--logging_steps", "4"])
    assert (training.num_train_epochs, training.logging_steps) == (5, 4)


def test_guide_method_3_overrides():
    model, data, finetune, training = parse_args(GUIDE_OVERRIDES + ["--use_cpu"])
    assert model.model_dir == "models/Fun-ASR-Nano-2512" and training.output_dir == "exp/funasr_nano_finetune"
    assert (data.train_data, data.valid_data) == (["data/train.jsonl"], ["data/valid.jsonl"])
    assert (data.batch_size, data.batch_type, data.num_workers) == (4, "example", 4)
    assert (training.per_device_train_batch_size, training.dataloader_num_workers) == (4, 4)
    assert (training.num_train_epochs, training.logging_steps, finetune.resume) == (10, 10, True)
    assert (training.eval_steps, training.save_steps) == (1000, 1000)
    assert (finetune.keep_nbest_models, finetune.avg_nbest_model, finetune.early_stopping_patience) == (5, 3, 3)
    assert (training.learning_rate, training.weight_decay, training.warmup_steps) == (1e-4, 1e-4, 500)
    assert (model.use_lora, model.lora_r, model.lora_alpha, model.lora_dropout) == (True, 8, 16, 0.1)
    assert model.lora_target_modules == "q_proj,v_proj,k_proj,o_proj" and model.llm_dtype == "fp16"


def test_dotted_options_and_quoted_values():
    *_, training = parse_args(BASE + ["--train_conf.max_epoch", "3", "--optim_conf.lr=2e-4"])
    assert (training.num_train_epochs, training.learning_rate) == (3, 2e-4)
    model, *_ = parse_args(BASE + ["--llm_conf.use_lora", "--llm_conf.llm_dtype", "bf16"])
    assert model.use_lora and model.llm_dtype == "bf16"
    model, *_ = parse_args(["++model='my dir'", '++train_data_set_list="t.jsonl"', "--use_cpu"])
    assert model.model_dir == "my dir"
    *_, training = parse_args(BASE + ["++train_conf.max_epoch=2", "++train_conf.max_epoch=4"])
    assert training.num_train_epochs == 4  # hydra: the later override wins


@pytest.mark.parametrize(
    "form",
    [
        ['++llm_conf.lora_conf.target_modules=["q_proj", "v_proj"]'],  # the guide's JSON list, after the shell
        ["++llm_conf.lora_conf.target_modules=[q_proj,v_proj]"],  # hydra's unquoted list
        ["--lora_target_modules", "q_proj,v_proj"],
        "yaml",
    ],
)
def test_target_modules_forms(form, tmp_path, tiny_original_dir):
    """Every spelling of the LoRA targets reaches peft as the module names (the guide's list form used to fail)."""
    from funasr_nano_hf import load_pretrained
    from funasr_nano_hf.training.model_setup import prepare_model_for_finetuning

    if form == "yaml":
        config = tmp_path / "c.yaml"
        config.write_text("llm_conf:\n  lora_conf:\n    target_modules: [q_proj, v_proj]\n")
        form = ["--config", str(config)]
    model_args, *_ = parse_args(["--model_dir", str(tiny_original_dir), "--train_data", "t.jsonl", *form])
    assert model_args.lora_target_modules == "q_proj,v_proj"
    model = prepare_model_for_finetuning(load_pretrained(tiny_original_dir)[0], model_args)
    adapted = {
        re.search(r"\.(\w+)\.lora_A\.", name).group(1) for name, _ in model.named_parameters() if "lora_A" in name
    }
    assert adapted == {"q_proj", "v_proj"}


def test_funasr_nested_config_equals_the_guide_line():
    """examples/conf/train_funasr_nano.yaml (FunASR's nested layout) holds the guide's values: the same resolved
    options as the guide's method-3 command line."""
    conf = REPO / "examples" / "conf" / "train_funasr_nano.yaml"
    paths = [arg for arg in GUIDE_OVERRIDES if not arg.split("=")[0].count(".")]  # model, data, output_dir
    assert len(paths) == 4
    from_file = parse_args(["--config", str(conf), *paths, "--use_cpu"])
    from_line = parse_args(GUIDE_OVERRIDES + ["--use_cpu"])
    assert _resolved(from_file) == _resolved(from_line)
    assert yaml.safe_load(conf.read_text())["llm_conf"]["lora_conf"]["target_modules"] == [
        "q_proj",
        "v_proj",
        "k_proj",
        "o_proj",
    ]


def test_model_folder_config_as_starting_point(tiny_original_dir, tmp_path):
    """--config <model_dir>/config.yaml: its train/dataset/optim/scheduler/llm sections are the starting point, the
    folder is the model; architecture keys come from the model itself and cannot be overridden."""
    funasr_yaml = yaml.safe_load((tiny_original_dir / "config.yaml").read_text())
    config = str(tiny_original_dir / "config.yaml")
    model, data, finetune, training = parse_args(["--config", config, "--train_data", "t.jsonl", "--use_cpu"])
    assert model.model_dir == str(tiny_original_dir)
    assert training.learning_rate == funasr_yaml["optim_conf"]["lr"]
    assert training.weight_decay == funasr_yaml["optim_conf"]["weight_decay"]
    assert training.warmup_steps == funasr_yaml["scheduler_conf"]["warmup_steps"]
    assert training.max_grad_norm == funasr_yaml["train_conf"]["grad_clip"]
    assert data.batch_type == funasr_yaml["dataset_conf"]["batch_type"]
    assert model.llm_dtype == funasr_yaml["llm_conf"]["llm_dtype"]
    assert model.freeze_audio_adaptor == funasr_yaml["audio_adaptor_conf"]["freeze"]
    lora = funasr_yaml["llm_conf"]["lora_conf"]
    assert (model.use_lora, model.lora_r, model.lora_alpha) == (funasr_yaml["llm_conf"]["use_lora"], lora["r"], 32)
    assert model.lora_target_modules == ",".join(lora["target_modules"])
    assert finetune.scheduler == "warmuplr" and training.optim.value == "adamw_torch_fused"
    model, _, _, training = parse_args(
        ["--config", config, "--train_data", "t.jsonl", "++llm_conf.use_lora=true", "++optim_conf.lr=0.001"]
    )
    assert model.use_lora and training.learning_rate == 0.001
    with pytest.raises(OptionError, match="audio_encoder_conf.output_size cannot be set: it describes the model"):
        parse_args(["--config", config, "--train_data", "t.jsonl", "++audio_encoder_conf.output_size=8"])
    copied = tmp_path / "config.yaml"  # not next to a model.pt: the model folder must be given
    copied.write_text((tiny_original_dir / "config.yaml").read_text())
    with pytest.raises(OptionError, match="missing option.*--model_dir"):
        parse_args(["--config", str(copied), "--train_data", "t.jsonl"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["++train_conf.max_epochs=3"], r"unknown option 'train_conf.max_epochs' \(did you mean train_conf.max_epoch"),
        (["--max_epochs", "3"], r"unknown option --max_epochs \(did you mean max_epoch"),
        (["train_conf.max_epoch=3"], r"write FunASR overrides as \+\+train_conf.max_epoch=3"),
        (["++dataset_conf.batch_size_token_max=2500"], "dataset_conf.batch_size_token_max=2500 is not supported"),
        (["++train_conf.use_deepspeed=true"], "train_conf.deepspeed_config=PATH or --deepspeed PATH"),
        (["++train_conf.grad_clip_type=1"], "grad_clip_type=1 is not supported: gradients are clipped by their 2-norm"),
        (["++freeze_param=llm"], "freeze_param='llm' is not supported: freeze whole parts with"),
        (["++optim=adam"], r"optim: 'adam' is not supported; supported: \['adamw', 'sgd'\]"),
        (["++scheduler=cosine"], r"--scheduler: 'cosine' is not one of \['warmuplr', 'hf'\]"),
        (["--lr", "fast"], None),  # argparse's own error (exit 2)
        (["--remove_unused_columns", "true"], "--remove_unused_columns True is not supported: the collator needs"),
        (["--do_predict", "true"], "--do_predict True is not supported"),
        (["--auto_find_batch_size"], "--auto_find_batch_size True is not supported"),
        (["--train_sampling_strategy", "group_by_length"], "not supported: training batches come from FunASR's"),
        (["--load_best_model_at_end", "true"], "--load_best_model_at_end true needs validation data"),
        (["--eval_strategy", "steps"], "--eval_strategy steps needs validation data"),
        (["--do_eval", "true"], "--do_eval true needs validation data"),
        (["--do_train", "false"], "--do_train false: examples/finetune.py always trains"),
    ],
)
def test_bad_options_are_named_errors(args, message):
    if message is None:
        with pytest.raises(SystemExit):
            parse_args(BASE + args)
        return
    with pytest.raises(OptionError, match=message):
        parse_args(BASE + args)


def test_funasr_no_op_values_are_accepted(tmp_path):
    """A model folder's config.yaml carries FunASR defaults that change nothing here: accepted."""
    config = tmp_path / "c.yaml"
    config.write_text(
        "train_conf: {use_deepspeed: false, use_ddp: false, grad_clip_type: 2.0, use_bf16: false}\n"
        "dataset_conf: {index_ds: FunASR, batch_sampler: BatchSampler, shuffle: true, retry: 20}\n"
        "llm_conf: {hub: hf, lora_conf: {task_type: CAUSAL_LM, freeze_lora: false}}\n"
    )
    *_, training = parse_args(["--config", str(config), *BASE])
    assert training.bf16 is False
    config.write_text("dataset_conf: {shuffle: false}\n")
    with pytest.raises(OptionError, match="shuffle=False is not supported: training batches are always shuffled"):
        parse_args(["--config", str(config), *BASE])


def test_every_mapped_funasr_key_names_an_option():
    """The key table cannot drift from the options (a renamed field would silently drop a FunASR key)."""
    names = option_names()
    for key, entry in FUNASR_KEYS.items():
        if isinstance(entry, Mapped) and entry.option is not None:
            assert entry.option in names, key


def test_help_shows_the_defaults_used_and_the_aliases(capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--help"])
    assert exit_info.value.code == 0
    text = re.sub(r"\s+", " ", capsys.readouterr().out)

    def entry(option: str) -> str:
        match = re.search(
            rf" --{option} [A-Z_]+, --{option.replace('_', '-')} [A-Z_]+ (.*?)(?= --[a-z][a-z_]* \[?[A-Z])", text
        )
        assert match, option
        return match.group(1)

    *_, training = parse_args(BASE)
    for alias, target in [("max_epoch", "num_train_epochs"), ("lr", "learning_rate")]:
        assert f"alias of --{target}" in (entry(alias) if "_" in alias else text.split(f" --{alias} ")[1])
        assert f"alias: --{alias}" in entry(target)
    assert "alias of --per_device_train_batch_size" in entry("batch_size")
    for name in (
        "num_train_epochs",
        "learning_rate",
        "per_device_train_batch_size",
        "warmup_steps",
        "weight_decay",
        "logging_steps",
        "eval_steps",
        "save_steps",
        "dataloader_num_workers",
        "max_grad_norm",
    ):
        shown = re.search(r"\(default: ([^)]*)\)", entry(name)).group(1)
        assert float(shown) == float(getattr(training, name)), name
    assert "FunASR: ++train_conf.max_epoch" in entry("num_train_epochs")


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


def test_evaluation_defaults_follow_the_validation_data_and_what_was_given():
    *_, training = parse_args(BASE + ["--valid_data", "v.jsonl"])
    assert not training.load_best_model_at_end and training.metric_for_best_model == "eval_cer"
    assert training.greater_is_better is False and training.eval_strategy == "steps"
    *_, training = parse_args(BASE + ["--valid_data", "v.jsonl", "--metric_for_best_model", "eval_wer_like"])
    assert training.greater_is_better is True
    *_, training = parse_args(BASE + ["--valid_data", "v.jsonl", "--load_best_model_at_end", "false"])
    assert training.load_best_model_at_end is False and training.eval_strategy == "steps"
    *_, training = parse_args(BASE + ["--valid_data", "v.jsonl", "--greater_is_better", "true"])
    assert training.greater_is_better is True and training.metric_for_best_model == "eval_cer"
    *_, training = parse_args(BASE + ["--valid_data", "v.jsonl", "--metric_for_best_model", "eval_loss"])
    assert training.greater_is_better is False
    *_, training = parse_args(BASE)
    assert training.eval_strategy == "no" and not training.load_best_model_at_end and not training.do_eval


def test_launched_world_size_must_match(monkeypatch):
    """e.g. `accelerate launch --num_processes 2` on a CPU machine without --use_cpu: N separate trainings."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(RuntimeError, match="launched as 2 processes but the Trainer sees 1"):
        check_launched_world_size(SimpleNamespace(world_size=1))
    check_launched_world_size(SimpleNamespace(world_size=2))


@pytest.mark.parametrize(
    "extra",
    [
        [],
        ["--valid_data", "v.jsonl", "--load_best_model_at_end", "false", "--feature_num_proc", "2"],
        GUIDE_OVERRIDES[4:] + ["--valid_data", "v.jsonl", "--deepspeed", str(REPO / "examples/deepspeed/zero2.json")],
        ["--valid_data", "v.jsonl", "--greater_is_better", "true", "--report_to", "tensorboard", "--hub_token", "x"],
    ],
)
def test_resolved_config_round_trips(tmp_path, extra):
    """config.yaml holds the options the run uses, by group; `--config config.yaml` resolves to the same options
    (the credential excepted: it is never written)."""
    args = parse_args(BASE + extra)
    save_resolved_config(tmp_path / "config.yaml", *args)
    resolved = yaml.safe_load((tmp_path / "config.yaml").read_text(encoding="utf-8"))
    assert list(resolved) == ["model", "data", "finetune", "training"]
    assert resolved["training"]["learning_rate"] == args[3].learning_rate
    assert resolved["training"]["hub_token"] == ("<redacted>" if "--hub_token" in extra else None)
    again = parse_args(["--config", str(tmp_path / "config.yaml")])
    assert _resolved(again) == _resolved(args)
    assert again[3].hub_token is None


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("lora.yaml", {"use_lora": True, "lora_r": 8, "freeze_audio_adaptor": True, "per_device_eval_batch_size": 8}),
        ("adaptor.yaml", {"use_lora": False, "freeze_audio_adaptor": False, "freeze_llm": True, "learning_rate": 1e-4}),
    ],
)
def test_example_configs_resolve(name, expected):
    """examples/configs/*.yaml are read by the parser (a stale key there fails here)."""
    model, data, finetune, training = parse_args(["--config", str(REPO / "examples" / "configs" / name), "--use_cpu"])
    values = {**asdict(model), **asdict(data), **asdict(finetune), **training.to_dict()}
    assert {key: values[key] for key in expected} == expected
    assert model.model_dir == "Fun-ASR-Nano-2512" and data.valid_data == ["data/valid.jsonl"]


def test_data_paths_are_lists_from_any_form(tmp_path):
    """train_data / valid_data are lists whichever form gave them (a FunASR key holds one path)."""
    config = tmp_path / "c.yaml"
    config.write_text("model: m\ntrain_data_set_list: a.jsonl\nvalid_data_set_list: [b.jsonl, c.jsonl]\n")
    _, data, _, _ = parse_args(["--config", str(config)])
    assert (data.train_data, data.valid_data) == (["a.jsonl"], ["b.jsonl", "c.jsonl"])


# FunASR key = value (not the default) -> (our option, the value it gets): the keys FunASR's guide, its scripts and
# a model folder's config.yaml use.
FUNASR_KEY_CASES = {
    "train_conf.max_epoch": (7, "num_train_epochs", 7),
    "train_conf.log_interval": (9, "logging_steps", 9),
    "train_conf.validate_interval": (20, "eval_steps", 20),
    "train_conf.save_checkpoint_interval": (40, "save_steps", 40),
    "train_conf.accum_grad": (3, "gradient_accumulation_steps", 3),
    "train_conf.grad_clip": (2.5, "max_grad_norm", 2.5),
    "train_conf.keep_nbest_models": (7, "keep_nbest_models", 7),
    "train_conf.avg_nbest_model": (2, "avg_nbest_model", 2),
    "train_conf.early_stopping_patience": (0, "early_stopping_patience", 0),
    "train_conf.resume": (True, "resume", True),
    "train_conf.use_bf16": (True, "bf16", True),
    "dataset_conf.batch_size": (6, "per_device_train_batch_size", 6),
    "dataset_conf.batch_type": ("length", "batch_type", "length"),
    "dataset_conf.num_workers": (2, "dataloader_num_workers", 2),
    "dataset_conf.max_source_length": (1500, "max_source_length", 1500),
    "dataset_conf.max_target_length": (150, "max_target_length", 150),
    "dataset_conf.min_source_length": (5, "min_source_length", 5),
    "optim_conf.lr": (0.002, "learning_rate", 0.002),
    "optim_conf.weight_decay": (0.01, "weight_decay", 0.01),
    "optim_conf.betas": ([0.8, 0.95], "adam_beta2", 0.95),
    "optim_conf.eps": (1.0e-6, "adam_epsilon", 1e-6),
    "scheduler_conf.warmup_steps": (25000, "warmup_steps", 25000),
    "llm_conf.use_lora": (False, "use_lora", False),
    "llm_conf.llm_dtype": ("bf16", "llm_dtype", "bf16"),
    "llm_conf.freeze": (False, "freeze_llm", False),
    "llm_conf.activation_checkpoint": (True, "activation_checkpoint", True),
    "llm_conf.lora_conf.r": (16, "lora_r", 16),
    "llm_conf.lora_conf.lora_alpha": (32, "lora_alpha", 32),
    "llm_conf.lora_conf.lora_dropout": (0.05, "lora_dropout", 0.05),
    "audio_encoder_conf.freeze": (False, "freeze_audio_encoder", False),
    "audio_adaptor_conf.freeze": (False, "freeze_audio_adaptor", False),
    "scheduler": ("warmuplr", "scheduler", "warmuplr"),
    "optim": ("adamw", "optim", "adamw_torch_fused"),
}


@pytest.mark.parametrize(
    ("key", "form"),
    [
        (key, form)
        for key in sorted(FUNASR_KEY_CASES)
        for form in ("override", "dotted", "yaml")
        if "." in key or form != "dotted"
    ],
)
def test_funasr_key_reaches_its_option(key, form, tmp_path):
    value, option, expected = FUNASR_KEY_CASES[key]
    if form == "yaml":
        tree: dict = {}
        *sections, leaf = key.split(".")
        node = tree
        for section in sections:
            node = node.setdefault(section, {})
        node[leaf] = value
        (tmp_path / "c.yaml").write_text(yaml.safe_dump(tree))
        args = ["--config", str(tmp_path / "c.yaml")]
    else:
        text = json.dumps(value)  # hydra reads JSON scalars and lists as they are
        args = [f"++{key}={text}"] if form == "override" else [f"--{key}", text]
    model, data, finetune, training = parse_args(BASE + args)
    values = {**asdict(model), **asdict(data), **asdict(finetune), **training.to_dict()}
    assert values[option] == expected


def test_lora_only_freezes_everything_but_lora(tmp_path):
    """FunASR's lora_only=true (lora_finetune.sh) trains the LoRA matrices only."""
    config = tmp_path / "c.yaml"
    config.write_text("audio_adaptor_conf: {freeze: false}\nllm_conf: {freeze: false, use_lora: false}\n")
    model, *_ = parse_args(BASE + ["--config", str(config)])
    assert (model.freeze_audio_adaptor, model.freeze_llm, model.use_lora) == (False, False, False)
    model, *_ = parse_args(BASE + ["--config", str(config), "++lora_only=true"])
    assert (model.freeze_audio_encoder, model.freeze_audio_adaptor, model.freeze_llm, model.use_lora) == (True,) * 4


def test_funasr_optimisation_by_default_transformers_schedule_on_request():
    """FunASR's optim: adamw (torch AdamW) and scheduler: warmuplr by default; --lr_scheduler_type selects
    transformers' schedule; contradictions and a warm-up warmuplr cannot run are refused by name."""
    _, _, finetune, training = parse_args(BASE)
    assert finetune.scheduler == "warmuplr" and training.optim == "adamw_torch_fused"
    _, _, finetune, training = parse_args(BASE + ["--lr_scheduler_type", "cosine", "--optim", "adamw_torch_fused"])
    assert finetune.scheduler == "hf" and training.lr_scheduler_type == "cosine"
    assert training.optim == "adamw_torch_fused"
    _, _, finetune, _ = parse_args(BASE + ["--scheduler", "hf"])
    assert finetune.scheduler == "hf"
    with pytest.raises(OptionError, match="--scheduler warmuplr and --lr_scheduler_type cosine both given"):
        parse_args(BASE + ["--scheduler", "warmuplr", "--lr_scheduler_type", "cosine"])
    with pytest.raises(OptionError, match="--warmup_steps 0: FunASR.s warmuplr needs a warm-up"):
        parse_args(BASE + ["--warmup_steps", "0"])
    _, _, finetune, training = parse_args(BASE + ["--warmup_steps", "0", "--lr_scheduler_type", "constant"])
    assert finetune.scheduler == "hf" and training.warmup_steps == 0
