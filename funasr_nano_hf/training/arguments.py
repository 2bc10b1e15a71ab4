"""Fine-tuning options: FunASR's guide knobs (names and defaults) next to the full `TrainingArguments`.

The guide's names (max_epoch, log_interval, validate_interval, save_checkpoint_interval, accum_grad, lr,
batch_size, ...) are fields of `FinetuneArguments`; `apply_guide_defaults` maps them onto the
corresponding `TrainingArguments` field unless that field was given explicitly. Options come from a YAML
file (`--config`) and/or the command line; the command line wins. `parse_args` then applies
`finalize_training_args` (DeepSpeed config, evaluation defaults, launched world size), so the returned
options are the ones the Trainer runs with; `save_resolved_config` writes them to `config.yaml`.
"""

from __future__ import annotations

import os
import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml
from transformers import HfArgumentParser, TrainingArguments

from ..data.featurize import DataConfig
from .secrets import redact


@dataclass
class ModelArguments:
    """What to fine-tune: the model folder, the LLM's compute dtype, what is frozen, LoRA."""

    model_dir: str = field(metadata={"help": "original FunASR folder (config.yaml + model.pt) or an HF folder"})
    llm_dtype: str = field(
        default="fp32",
        metadata={"help": "fp32 | bf16 | fp16: the dtype the LLM computes in (audio encoder and adaptor stay fp32)"},
    )
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


def _data_config_field(name: str) -> Any:
    """A `DataArguments` field that is `DataConfig`'s field `name`: default and help text defined once, there."""
    source = DataConfig.__dataclass_fields__[name]
    return field(default=source.default, metadata=dict(source.metadata))


@dataclass
class DataArguments:
    """The training data and how it is batched; the featurization fields are `DataConfig`'s (`DataConfig.from_args`)."""

    train_data: list[str] = field(metadata={"help": "manifests (jsonl / chatml / source-target / wav.scp)"})
    valid_data: list[str] = field(default_factory=list)
    max_source_length: int = _data_config_field("max_source_length")
    max_target_length: int = _data_config_field("max_target_length")
    min_source_length: int = _data_config_field("min_source_length")
    batch_type: str = field(default="example", metadata={"help": "example | length | token"})
    batch_size: int = field(default=4, metadata={"help": "examples per batch (example/length)"})
    max_tokens: int = field(default=6000, metadata={"help": "padded budget per batch (batch_type token)"})
    num_workers: int = field(default=4)
    feature_num_proc: int = _data_config_field("num_proc")
    on_bad_data: str = _data_config_field("on_bad_data")
    cache_frozen_audio: bool = field(
        default=False, metadata={"help": "compute the frozen encoder+adaptor once and store it with the dataset"}
    )
    max_eval_samples: int | None = field(default=None)


@dataclass
class FinetuneArguments:
    """FunASR fine-tuning guide knobs with the guide's names and defaults, so its recipes run unchanged."""

    config: str | None = field(default=None, metadata={"help": "YAML file with any of these options"})
    max_epoch: int = field(default=10)
    log_interval: int = field(default=10)
    validate_interval: int = field(default=1000)
    save_checkpoint_interval: int = field(default=1000)
    keep_nbest_models: int = field(default=5)
    avg_nbest_model: int = field(default=3)
    avg_keep_nbest_models_type: str = field(
        default="cer",
        metadata={
            "help": "what the n best checkpoints are ranked by: cer (eval CER, ours) | acc | loss (FunASR's)",
            "choices": ["cer", "acc", "loss"],
        },
    )
    early_stopping_patience: int = field(
        default=3, metadata={"help": "epochs whose end-of-epoch eval loss does not improve on the best; 0 = off"}
    )
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


def parse_args(
    argv: list[str] | None = None,
) -> tuple[ModelArguments, DataArguments, FinetuneArguments, TrainingArguments]:
    """(model, data, finetune, training) arguments from `--config YAML` and the command line, with the guide's
    defaults applied and the training arguments finalized (`finalize_training_args`)."""
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
    finalize_training_args(training_args, validating=bool(data_args.valid_data))
    return model_args, data_args, finetune_args, training_args


def apply_guide_defaults(
    finetune_args: FinetuneArguments,
    training_args: TrainingArguments,
    explicit: set[str],
    data_args: DataArguments | None = None,
) -> TrainingArguments:
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
    if "metric_for_best_model" not in explicit:  # the Trainer's "best" = the n-best ranking
        training_args.metric_for_best_model = f"eval_{finetune_args.avg_keep_nbest_models_type}"
    return training_args


def finalize_training_args(training_args: TrainingArguments, validating: bool) -> TrainingArguments:
    """The last adjustments once every option is known: DeepSpeed config, evaluation defaults, world-size check."""
    refill_deepspeed_config(training_args)
    apply_evaluation_defaults(training_args, validating)
    check_launched_world_size(training_args)
    return training_args


def refill_deepspeed_config(training_args: TrainingArguments) -> None:
    """`--deepspeed CONFIG` fills the config's "auto" values when TrainingArguments is built, before the guide
    options (batch_size, accum_grad, grad_clip) are applied: fill them again from the final values."""
    if not training_args.deepspeed:
        return
    from accelerate.utils import DeepSpeedPlugin
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig

    training_args.hf_deepspeed_config = HfTrainerDeepSpeedConfig(training_args.deepspeed)
    training_args.hf_deepspeed_config.trainer_config_process(training_args)
    training_args.deepspeed_plugin = DeepSpeedPlugin(hf_ds_config=training_args.hf_deepspeed_config)


def apply_evaluation_defaults(training_args: TrainingArguments, validating: bool) -> None:
    """With validation data: the best checkpoint is tracked by CER (lower is better) unless told otherwise, as
    FunASR's n-best; `final/` is the last weights (FunASR's model.pt) unless --load_best_model_at_end true.
    Without: no evaluation at all."""
    if validating:
        training_args.metric_for_best_model = training_args.metric_for_best_model or "eval_cer"
        training_args.greater_is_better = not training_args.metric_for_best_model.endswith(("cer", "loss"))
    else:
        training_args.eval_strategy = "no"
        training_args.load_best_model_at_end = False


def check_launched_world_size(training_args: TrainingArguments) -> None:
    """Stop when the launcher started more processes than the Trainer sees (e.g. GPU launch flags on a CPU-only
    machine), which would otherwise run N separate trainings."""
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched != training_args.world_size:
        raise RuntimeError(
            f"launched as {launched} processes but the Trainer sees {training_args.world_size}; without GPUs pass "
            "--use_cpu true (DDP), or --ddp_backend gloo (DeepSpeed through accelerate launch)"
        )


def save_resolved_config(
    path: str | Path,
    model_args: ModelArguments,
    data_args: DataArguments,
    finetune_args: FinetuneArguments,
    training_args: TrainingArguments,
) -> None:
    """`config.yaml`: every option the run uses, by group (model, data, finetune, training); secrets redacted."""
    resolved = redact(
        {
            "model": asdict(model_args),
            "data": asdict(data_args),
            "finetune": asdict(finetune_args),
            "training": training_args.to_dict(),
        }
    )
    Path(path).write_text(yaml.safe_dump(resolved, allow_unicode=True, sort_keys=False), encoding="utf-8")
