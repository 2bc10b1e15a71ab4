"""Fine-tuning options: FunASR's guide knobs (names and defaults) next to the full `TrainingArguments`.

The guide's names (max_epoch, log_interval, validate_interval, save_checkpoint_interval, accum_grad, lr,
batch_size, ...) are fields of `FinetuneArguments`; `apply_guide_defaults` maps them onto the
corresponding `TrainingArguments` field unless that field was given explicitly. Options come from a YAML
file (`--config`) and/or the command line; the command line wins.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field, fields

import yaml
from transformers import HfArgumentParser, TrainingArguments


@dataclass
class ModelArguments:
    model_dir: str = field(metadata={"help": "original FunASR folder (config.yaml + model.pt) or an HF folder"})
    llm_dtype: str = field(default="fp32", metadata={"help": "fp32 | bf16 | fp16 (the audio path stays fp32)"})
    freeze_audio_encoder: bool = field(default=True)
    freeze_audio_adaptor: bool = field(default=True)
    freeze_llm: bool = field(default=True, metadata={"help": "LoRA adapters train even when the LLM is frozen"})
    use_lora: bool = field(default=True)
    lora_r: int = field(default=8)
    lora_alpha: int = field(default=16)
    lora_dropout: float = field(default=0.1)
    lora_target_modules: str = field(default="q_proj,k_proj,v_proj,o_proj", metadata={"help": "LLM linears"})
    activation_checkpoint: bool = field(default=False, metadata={"help": "gradient checkpointing of the LLM"})
    merge_lora: bool = field(default=False, metadata={"help": "also save the final model with LoRA merged"})


@dataclass
class DataArguments:
    train_data: list[str] = field(metadata={"help": "manifests (jsonl / chatml / source-target / wav.scp)"})
    valid_data: list[str] = field(default_factory=list)
    max_source_length: int = field(default=2000, metadata={"help": "10 ms fbank frames"})
    max_target_length: int = field(default=200, metadata={"help": "transcript tokens"})
    min_source_length: int = field(default=10)
    batch_type: str = field(default="example", metadata={"help": "example | length | token"})
    batch_size: int = field(default=4, metadata={"help": "examples per batch (example/length)"})
    max_tokens: int = field(default=6000, metadata={"help": "padded budget per batch (batch_type token)"})
    num_workers: int = field(default=4)
    feature_num_proc: int = field(default=1, metadata={"help": "processes for featurisation (Dataset.map)"})
    on_bad_data: str = field(default="stop", metadata={"help": "stop | skip (skipped examples are counted)"})
    cache_frozen_audio: bool = field(
        default=False, metadata={"help": "compute the frozen encoder+adaptor once and store it with the dataset"}
    )
    max_eval_samples: int | None = field(default=None)


@dataclass
class FinetuneArguments:
    """FunASR fine-tuning guide knobs, guide defaults."""

    config: str | None = field(default=None, metadata={"help": "YAML file with any of these options"})
    max_epoch: int = field(default=10)
    log_interval: int = field(default=10)
    validate_interval: int = field(default=1000)
    save_checkpoint_interval: int = field(default=1000)
    keep_nbest_models: int = field(default=5)
    avg_nbest_model: int = field(default=3)
    early_stopping_patience: int = field(default=3, metadata={"help": "evaluations without CER improvement; 0 = off"})
    resume: bool = field(default=False, metadata={"help": "continue from the newest complete checkpoint"})
    lr: float = field(default=1e-4)
    accum_grad: int = field(default=1)
    grad_clip: float = field(default=5.0)
    eval_max_new_tokens: int | None = field(default=None, metadata={"help": "default: scaled with duration"})
    on_nonfinite: str = field(
        default="stop",
        metadata={
            "help": "NaN/inf loss or gradient: stop (named error) | skip (no update from the batch, counted)",
            "choices": ["stop", "skip"],
        },
    )


GUIDE_TO_TRAINING = {
    "max_epoch": "num_train_epochs",
    "log_interval": "logging_steps",
    "validate_interval": "eval_steps",
    "save_checkpoint_interval": "save_steps",
    "lr": "learning_rate",
    "accum_grad": "gradient_accumulation_steps",
    "grad_clip": "max_grad_norm",
}

DATA_TO_TRAINING = {"batch_size": "per_device_train_batch_size", "num_workers": "dataloader_num_workers"}

# Guide defaults for TrainingArguments fields that keep their own name.
GUIDE_TRAINING_DEFAULTS = {"weight_decay": 1e-4, "warmup_steps": 500}

ARGUMENT_CLASSES = (ModelArguments, DataArguments, FinetuneArguments, TrainingArguments)


def parse_args(argv: list[str] | None = None):
    """(model, data, finetune, training) arguments from `--config YAML` and the command line."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = HfArgumentParser(ARGUMENT_CLASSES)
    explicit = {arg[2:].split("=", 1)[0].replace("-", "_") for arg in argv if arg.startswith("--")}
    config_path = None
    if "--config" in argv:
        config_path = argv[argv.index("--config") + 1]
    elif any(a.startswith("--config=") for a in argv):
        config_path = next(a for a in argv if a.startswith("--config=")).split("=", 1)[1]
    if config_path:
        with open(config_path, encoding="utf-8") as handle:
            from_yaml = yaml.safe_load(handle) or {}
        known = {f.name for cls in ARGUMENT_CLASSES for f in fields(cls)}
        unknown = sorted(set(from_yaml) - known)
        if unknown:
            raise ValueError(f"{config_path}: unknown option(s) {unknown}")
        parser.set_defaults(**from_yaml)
        for action in parser._actions:  # a value from the YAML satisfies a required option
            if action.dest in from_yaml:
                action.required = False
        explicit |= set(from_yaml)
    model_args, data_args, finetune_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    apply_guide_defaults(finetune_args, training_args, explicit, data_args)
    return model_args, data_args, finetune_args, training_args


def apply_guide_defaults(
    finetune_args: FinetuneArguments,
    training_args: TrainingArguments,
    explicit: set[str],
    data_args: DataArguments | None = None,
):
    """Guide knob -> TrainingArguments field, unless that field itself was set explicitly."""
    for guide_name, training_name in GUIDE_TO_TRAINING.items():
        if training_name not in explicit:
            setattr(training_args, training_name, getattr(finetune_args, guide_name))
    if data_args is not None:
        for guide_name, training_name in DATA_TO_TRAINING.items():
            if training_name not in explicit:
                setattr(training_args, training_name, getattr(data_args, guide_name))
    for name, value in GUIDE_TRAINING_DEFAULTS.items():
        if name not in explicit:
            setattr(training_args, name, value)
    if "eval_strategy" not in explicit:
        training_args.eval_strategy = "steps"
    if "save_strategy" not in explicit:
        training_args.save_strategy = "steps"
    if "logging_strategy" not in explicit:
        training_args.logging_strategy = "steps"
    if "save_total_limit" not in explicit:
        training_args.save_total_limit = None  # the n-best callback prunes
    if "remove_unused_columns" not in explicit:
        training_args.remove_unused_columns = False  # the collator picks the columns it needs
    if "report_to" not in explicit:
        training_args.report_to = []
    return training_args
