"""Fine-tuning options: FunASR's guide knobs (names and defaults) next to the full `TrainingArguments`.

The guide's names (max_epoch, log_interval, validate_interval, save_checkpoint_interval, accum_grad, lr,
batch_size, num_workers, grad_clip) are aliases of the `TrainingArguments` field they set (`aliases()`); the
defaults are the guide's (`run_defaults()`, what `--help` shows). Options come from a YAML file (`--config`:
our names flat or grouped as in an output config.yaml, FunASR's nested layout, or a model folder's config.yaml)
and the command line (`--name value`, FunASR's `++section.key=value`, dotted `--section.key value`;
`funasr_options` maps FunASR's keys). The command line wins over the file, whichever spelling each uses; one
source giving an option two different values is an error, as is an unknown option (with the closest name).
`parse_args` then applies `finalize_training_args` (DeepSpeed config, evaluation defaults that respect what was
given, launched world size), so the returned options are the ones the Trainer runs with;
`save_resolved_config` writes them to `config.yaml`, which `--config` reads back into the same options.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from collections.abc import Collection
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml
from transformers import HfArgumentParser, TrainingArguments

from ..data.featurize import DataConfig
from .funasr_options import (
    FUNASR_KEYS,
    OPTIMIZER_NAMES,
    OptionError,
    flatten,
    funasr_key_of,
    parse_override_value,
    suggestion,
    translate,
)
from .schedulers import HF_SCHEDULER, SCHEDULERS, WARMUPLR
from .secrets import REDACTED, is_secret_name, redact


@dataclass
class ModelArguments:
    """What to fine-tune: the model folder, the LLM's compute dtype, what is frozen, LoRA."""

    model_dir: str = field(
        metadata={
            "help": "original FunASR folder (config.yaml + model.pt), an HF folder, or a model id on the hub (--hub), "
            "e.g. FunAudioLLM/Fun-ASR-Nano-2512, downloaded into the hub's cache"
        }
    )
    hub: str = field(
        default="hf",
        metadata={
            "help": "where a model id is downloaded from: hf (Hugging Face) | ms (ModelScope)",
            "choices": ["hf", "ms"],
        },
    )
    model_revision: str | None = field(default=None, metadata={"help": "branch, tag or commit of a hub model id"})
    llm_dtype: str = field(
        default="auto",
        metadata={
            "help": "auto | fp32 | bf16 | fp16: the dtype the LLM computes in, under autocast (bf16 turns on --bf16, "
            "fp16 --fp16 with a GradScaler); the audio encoder and adaptor compute in fp32 and trained parameters "
            "keep fp32 master weights. auto: the checkpoint's llm_dtype on CUDA (bf16 for Fun-ASR-Nano), fp32 on CPU"
        },
    )
    attn_implementation: str | None = field(
        default=None,
        metadata={
            "help": "the LLM's attention: sdpa | eager | flash_attention_2 | ... (transformers' names); the fp32 "
            "audio encoder keeps its own (sdpa). None: transformers' default"
        },
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
    max_token_length: int | None = _data_config_field("max_token_length")
    batch_type: str = _data_config_field("batch_type")
    batch_size: int = field(
        default=4,
        metadata={
            "help": "batch_type example: examples per batch; length/token: padded budget per batch, "
            "max(fbank frames + text tokens) x examples (FunASR's meaning)"
        },
    )
    sort_size: int = field(
        default=1024,
        metadata={"help": "length/token: examples per rank in each buffer sorted by length (<= 0: no sorting)"},
    )
    batch_size_sample_max: int = field(default=200, metadata={"help": "length/token: most examples in one batch"})
    max_tokens: int | None = field(default=None, metadata={"help": "removed: use --batch_size (see its help)"})
    num_workers: int = field(default=4)
    feature_num_proc: int = _data_config_field("num_proc")
    on_bad_data: str = _data_config_field("on_bad_data")
    precompute_features: bool = _data_config_field("precompute_features")
    streaming: bool = field(
        default=False,
        metadata={
            "help": "read --train_data (JSONL shards) as a stream: nothing cached, every example once per epoch "
            "over ranks and workers, token-budget batches from --sort_size buffers (--batch_type token), exact "
            "resume; needs --max_steps"
        },
    )
    dither: float = _data_config_field("dither")
    specaug: bool = _data_config_field("specaug")
    specaug_conf: str | None = _data_config_field("specaug_conf")
    speed_perturb: str | None = _data_config_field("speed_perturb")
    cache_frozen_audio: bool = field(
        default=False,
        metadata={
            "help": "compute the frozen encoder+adaptor once and store it with the dataset (implies "
            "--precompute_features true: the cache is of clean features)"
        },
    )
    max_eval_samples: int | None = field(default=None)

    def __post_init__(self):
        if self.specaug_conf is not None or self.speed_perturb is not None:
            try:  # a bad --specaug_conf / --speed_perturb: named now, not in a loader worker
                DataConfig.from_args(self)
            except ValueError as err:
                raise OptionError(f"--{err}") from None
        if self.max_tokens is not None:
            raise ValueError(
                f"--max_tokens {self.max_tokens}: removed. As in FunASR, --batch_size is the padded budget under "
                f"--batch_type length/token: use --batch_type token --batch_size {self.max_tokens}"
            )


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
            "help": "what the n best checkpoints are ranked by: cer | wer | mer (eval character / word / mixed "
            "error rate, ours) | acc | loss (FunASR's)",
            "choices": ["cer", "wer", "mer", "acc", "loss"],
        },
    )
    early_stopping_patience: int = field(
        default=3, metadata={"help": "epochs whose end-of-epoch eval loss does not improve on the best; 0 = off"}
    )
    resume: bool = field(default=False, metadata={"help": "continue from the newest complete checkpoint"})
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "an --output_dir holding a finished or interrupted run: delete it and start clean (without this "
            "or --resume such a folder is refused; transformers' v4 option)"
        },
    )
    lr: float = field(default=1e-4)
    scheduler: str = field(
        default=WARMUPLR,
        metadata={
            "help": "warmuplr: FunASR's schedule, lr * min(n/w, sqrt(w/n)) at optimizer update n, w = --warmup_steps "
            "(guide: 500) | hf: transformers' --lr_scheduler_type (giving --lr_scheduler_type selects hf)",
            "choices": list(SCHEDULERS),
        },
    )
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

# Guide defaults for TrainingArguments fields that keep their own name. The guide's optimizer is FunASR's
# `optim: adamw`, translated as that key is (`OPTIMIZER_NAMES`: torch's fused AdamW).
GUIDE_TRAINING_DEFAULTS = {"weight_decay": 1e-4, "warmup_steps": 500, "optim": OPTIMIZER_NAMES["adamw"]}

# How the run differs from TrainingArguments' defaults besides the guide's values: evaluation, saving and logging
# every N steps (the guide's intervals), n-best pruning by the callback (not save_total_limit), the collator
# picks its columns, no reporting integrations unless asked.
RUN_TRAINING_DEFAULTS = {
    "eval_strategy": "steps",
    "save_strategy": "steps",
    "logging_strategy": "steps",
    "save_total_limit": None,
    "remove_unused_columns": False,
    "report_to": [],
    # DDP: every trainable parameter gets a gradient at every step (LoRA on every LLM layer, trained modules all in
    # the forward pass), so the per-step search for unused ones is waste (transformers turns it on for a PeftModel);
    # FunASR's find_unused_parameters is false too. The buffers (positional tables, RoPE frequencies) are constants,
    # identical on every rank: broadcasting them at every forward is waste.
    "ddp_find_unused_parameters": False,
    "ddp_broadcast_buffers": False,
    # The Trainer's NaN filter of the logged loss syncs the host at every micro-batch; the non-finite guard checks
    # once per optimizer step instead (a skipped batch's loss is logged as 0).
    "logging_nan_inf_filter": False,
}

ARGUMENT_CLASSES = (ModelArguments, DataArguments, FinetuneArguments, TrainingArguments)

# TrainingArguments options this script cannot honour, with the values that are fine and the reason.
UNSUPPORTED_TRAINING_VALUES: dict[str, tuple[tuple[Any, ...], str]] = {
    "do_predict": ((False,), "there is no test set here; transcribe with `funasr-nano-hf transcribe`"),
    "remove_unused_columns": ((False,), "the collator needs the featurized columns (key, text, lengths)"),
    "train_sampling_strategy": (("random",), "training batches come from FunASR's batch sampler (--batch_type)"),
    "length_column_name": (("length",), "training batches come from FunASR's batch sampler (--batch_type)"),
    "auto_find_batch_size": ((False,), "the batch sampler uses --batch_size; an OOM stops with advice instead"),
    "dataloader_prefetch_factor": ((None, 2), "the training loader uses PyTorch's prefetch (2)"),
    "dataloader_multiprocessing_context": ((None,), "the training loader uses PyTorch's default context"),
}

# What --help adds where the default depends on the validation data (`apply_evaluation_defaults`).
EVALUATION_HELP = {
    "eval_strategy": "run default: steps with --valid_data, no without",
    "load_best_model_at_end": "run default: true with --valid_data",
    "metric_for_best_model": "run default: eval_cer (validation CER) with --valid_data",
    "greater_is_better": "run default: false for a metric ending in cer, wer, mer or loss, else true",
}

# Not written to config.yaml: the launcher sets it per process.
NOT_SAVED = {"local_rank"}
CONFIG_GROUPS = ("model", "data", "finetune", "training")

logger = logging.getLogger(__name__)


def aliases() -> dict[str, str]:
    """Guide name -> the TrainingArguments field it sets (`--max_epoch` is `--num_train_epochs`)."""
    return {**GUIDE_TO_TRAINING, **DATA_TO_TRAINING}


def run_defaults() -> dict[str, Any]:
    """TrainingArguments defaults of this script: the guide's (through the aliases' defaults) and the run's own."""
    defaults = {}
    own = {f.name: f for cls in ARGUMENT_CLASSES[:3] for f in fields(cls)}
    for alias, target in aliases().items():
        defaults[target] = own[alias].default
    return {**defaults, **GUIDE_TRAINING_DEFAULTS, **RUN_TRAINING_DEFAULTS}


def option_names() -> set[str]:
    return {f.name for cls in ARGUMENT_CLASSES for f in fields(cls) if f.init}


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown, the epilog's layout kept."""


HELP_EPILOG = """\
FunASR's forms work as well:
  ++section.key=value    a FunASR (hydra) override, e.g. ++train_conf.max_epoch=10 ++optim_conf.lr=0.0001
                         ++llm_conf.lora_conf.target_modules='["q_proj", "v_proj"]' ++model=DIR
  --section.key value    the same with a dotted option name
  --config FILE          YAML: these options by name, and/or FunASR's nested layout (train_conf, dataset_conf,
                         optim_conf, scheduler_conf, llm_conf.lora_conf, audio_*_conf.freeze); a model folder's own
                         config.yaml is a starting point too. An output config.yaml is accepted back.
The command line wins over the file. Guide names (FunASR's) are aliases of the TrainingArguments fields they set.
"""


def build_parser() -> HfArgumentParser:
    """The parser, with the defaults this script uses and the guide names marked as aliases (what --help shows)."""
    parser = HfArgumentParser(
        ARGUMENT_CLASSES,
        allow_abbrev=False,
        formatter_class=_HelpFormatter,
        description="Fine-tune Fun-ASR-Nano (FunASR's guide options + every transformers TrainingArguments option).",
        epilog=HELP_EPILOG,
    )
    defaults = run_defaults()
    alias_of = aliases()
    alias_by_target = {target: alias for alias, target in alias_of.items()}
    for action in parser._actions:
        name = action.dest
        if f"--{name}" not in action.option_strings:  # the --no_x complement of a boolean
            continue
        notes = []
        if name in alias_of:
            notes.append(f"alias of --{alias_of[name]}")
        if name in alias_by_target:
            notes.append(f"alias: --{alias_by_target[name]}")
        funasr_key = funasr_key_of(name) or funasr_key_of(alias_by_target.get(name, ""))
        if funasr_key:
            notes.append(f"FunASR: ++{funasr_key}")
        if name in EVALUATION_HELP:
            notes.append(EVALUATION_HELP[name])
        if name in defaults:
            action.default = defaults[name]
        if notes:
            action.help = f"{action.help or ''} [{'; '.join(notes)}]".strip()
    return parser


def _value_parser() -> HfArgumentParser:
    """The parser that reads only what the command line gives (no defaults, nothing required)."""
    parser = HfArgumentParser(ARGUMENT_CLASSES, allow_abbrev=False)
    for action in parser._actions:
        action.default = argparse.SUPPRESS
        action.required = False
    return parser


def _actions(parser: HfArgumentParser) -> dict[str, argparse.Action]:
    return {a.dest: a for a in parser._actions if f"--{a.dest}" in a.option_strings}


def _coerce(action: argparse.Action, value: Any, where: str) -> Any:
    """A YAML / override value as the option's type (what argparse does to command-line strings)."""
    if value is None:
        return None
    if action.nargs == "+":
        return [_coerce_one(action, item, where) for item in (value if isinstance(value, (list, tuple)) else [value])]
    return _coerce_one(action, value, where)


def _coerce_one(action: argparse.Action, value: Any, where: str) -> Any:
    if isinstance(value, (list, dict)):
        return value
    if action.type is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if isinstance(value, str) and action.type is not None:
        try:
            value = action.type(value)
        except (TypeError, ValueError, argparse.ArgumentTypeError) as err:
            raise OptionError(f"{where}: --{action.dest}: cannot read {value!r} ({err})") from None
    if action.choices is not None and value not in action.choices:
        raise OptionError(f"{where}: --{action.dest}: {value!r} is not one of {list(action.choices)}")
    return value


def _check_aliases(values: dict[str, Any], where: str) -> None:
    for alias, target in aliases().items():
        if alias in values and target in values and values[alias] != values[target]:
            raise OptionError(
                f"{where}: --{alias} {values[alias]!r} and --{target} {values[target]!r} set the same option "
                f"(--{alias} is an alias of --{target}); give one"
            )


def _typed(values: dict[str, Any], where: str) -> dict[str, Any]:
    actions = _actions(_value_parser())
    return {name: _coerce(actions[name], value, where) for name, value in values.items()}


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """The options a YAML file sets: our names (flat, or grouped as an output config.yaml), FunASR's nested
    layout, or a model folder's config.yaml (its folder is then the default --model_dir)."""
    where = f"--config {path}"
    try:
        tree = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as err:
        raise OptionError(f"{where}: cannot read ({err})") from None
    except yaml.YAMLError as err:
        raise OptionError(f"{where}: not valid YAML ({err})") from None
    if tree is None:
        return {}
    if not isinstance(tree, dict):
        raise OptionError(f"{where}: a mapping of option names to values expected, got {type(tree).__name__}")
    if isinstance(tree.get("model"), dict):  # an output config.yaml: {model: {...}, data: {...}, ...}
        grouped = {}
        for key, value in tree.items():
            if key in CONFIG_GROUPS and isinstance(value, dict):
                grouped.update(value)
            else:
                grouped[key] = value
        grouped.pop("config", None)  # the file that run was started from
        tree = grouped
    if "config" in tree:
        raise OptionError(f"{where}: 'config' inside a config file; pass one file with --config")
    own = option_names()
    translated = translate(flatten(tree, own), own, where, command_line=False)
    values = translated.values
    if translated.model_keys:
        sections = sorted({key.split(".", 1)[0] for key in translated.model_keys})
        logger.info(
            "%s: the model description (%s) is read from --model_dir, not from here", where, ", ".join(sections)
        )
    if translated.model_class and "model_dir" not in values and (Path(path).parent / "model.pt").is_file():
        values["model_dir"] = str(Path(path).parent)
    for name in [n for n, v in values.items() if is_secret_name(n) and v == REDACTED]:
        logger.warning("%s: %s is redacted in the file; pass it again on the command line if needed", where, name)
        values[name] = None
    _check_aliases(values, where)
    return _typed(values, where)


def read_command_line(argv: list[str]) -> tuple[str | None, dict[str, Any]]:
    """(--config path, the options the command line sets): `--name value`, FunASR's `++section.key=value`
    overrides (later ones win, as in hydra) and dotted `--section.key value`."""
    tokens: list[str] = []
    overrides: dict[str, Any] = {}
    config_path = None
    index = 0
    while index < len(argv):
        token = argv[index]
        name = token[2:].split("=", 1)[0] if token.startswith("--") else ""
        if re.match(r"[A-Za-z_]\w*\.[\w.]+=", token):  # hydra's plain `section.key=value`
            raise OptionError(f"command line: {token!r}: write FunASR overrides as ++{token}")
        if token.startswith("+") and not token.startswith("+-"):
            match = re.fullmatch(r"\+\+?([A-Za-z_][\w.]*)=(.*)", token, re.DOTALL)
            if match is None:
                raise OptionError(f"command line: {token!r}: FunASR overrides are ++section.key=value")
            overrides.pop(match.group(1), None)  # re-inserted last: the later override wins
            overrides[match.group(1)] = parse_override_value(match.group(2))
        elif name == "config":
            if config_path is not None:
                raise OptionError("command line: --config given twice; pass one file")
            if "=" in token:
                config_path = token.split("=", 1)[1]
            elif index + 1 < len(argv):
                config_path = argv[index + 1]
                index += 1
            else:
                raise OptionError("command line: --config needs a file")
        elif "." in name:
            if "=" in token:
                raw = token.split("=", 1)[1]
            elif index + 1 < len(argv) and not argv[index + 1].startswith(("--", "++")):
                raw = argv[index + 1]
                index += 1
            else:
                raw = "true"
            overrides.pop(name, None)
            overrides[name] = parse_override_value(raw)
        else:
            tokens.append(token)
        index += 1
    namespace, rest = _value_parser().parse_known_args(tokens)
    if rest:
        known = option_names() | set(FUNASR_KEYS)
        problems = []
        for token in rest:
            if token.startswith("-"):
                problems.append(f"unknown option {token}{suggestion(token.split('=', 1)[0], known)}")
            elif "=" in token:
                problems.append(f"{token!r}: write FunASR overrides as ++{token}")
            else:
                problems.append(f"unexpected argument {token!r}")
        raise OptionError("command line: " + "; ".join(problems) + " (see --help)")
    values = vars(namespace)
    own = option_names()
    translated = translate(flatten(overrides, own), own, "command line", command_line=True)
    typed = _typed(translated.values, "command line")
    for name, value in typed.items():
        if name in values and values[name] != value:
            raise OptionError(f"command line: --{name} is given twice ({values[name]!r} and {value!r})")
        values[name] = value
    _check_aliases(values, "command line")
    return config_path, values


def resolve_options(file_values: dict[str, Any], cli_values: dict[str, Any]) -> tuple[dict[str, Any], set[str]]:
    """The options given (command line over file; an alias and its field count as one option) and their names."""
    alias_of = aliases()
    partner = {**alias_of, **{target: alias for alias, target in alias_of.items()}}
    merged = dict(file_values)
    for name, value in cli_values.items():
        merged[name] = value
        if name in partner and partner[name] not in cli_values:
            merged.pop(partner[name], None)  # the file's spelling of the same option loses too
    for alias, target in alias_of.items():
        if target in merged:
            merged[alias] = merged[target]
        elif alias in merged:
            merged[target] = merged[alias]
    return merged, set(merged)


def parse_args(
    argv: list[str] | None = None,
) -> tuple[ModelArguments, DataArguments, FinetuneArguments, TrainingArguments]:
    """(model, data, finetune, training) arguments from `--config YAML` and the command line (which wins), guide
    names, FunASR's keys and overrides read as our options, the defaults of this script applied and the training
    arguments finalized (`finalize_training_args`). `-h` prints the options and exits."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        build_parser().parse_args(["--help"])
    config_path, cli_values = read_command_line(argv)
    file_values = read_config_file(config_path) if config_path else {}
    given, explicit = resolve_options(file_values, cli_values)
    validating = bool(given.get("valid_data"))
    check_validation_options(given, validating)
    check_always_trains(given)
    own_defaults = run_defaults()
    if not validating:
        own_defaults["eval_strategy"] = "no"
    built = []
    for cls in ARGUMENT_CLASSES:
        kwargs = {f.name: given[f.name] for f in fields(cls) if f.init and f.name in given}
        if cls is TrainingArguments:
            kwargs = {**{k: v for k, v in own_defaults.items() if k not in kwargs}, **kwargs}
        missing = [f.name for f in fields(cls) if f.init and f.name not in kwargs and _required(f)]
        if missing:
            forms = [
                f"--{name}" + (f" (FunASR ++{funasr_key_of(name)}=...)" if funasr_key_of(name) else "")
                for name in missing
            ]
            raise OptionError(f"missing option(s): {', '.join(forms)}; give them on the command line or in --config")
        built.append(cls(**kwargs))
    model_args, data_args, finetune_args, training_args = built
    finetune_args.config = config_path
    training_args.do_train = True  # what the run does (config.yaml records it)
    check_unsupported_training_values(training_args)
    choose_scheduler(finetune_args, training_args, explicit)
    # the Trainer's "best" = the n-best ranking (FunASR's avg_keep_nbest_models_type)
    finalize_training_args(
        training_args, validating, explicit, metric=f"eval_{finetune_args.avg_keep_nbest_models_type}"
    )
    return model_args, data_args, finetune_args, training_args


def _required(f: Any) -> bool:
    return f.default is MISSING and f.default_factory is MISSING


def check_validation_options(given: dict[str, Any], validating: bool) -> None:
    """Evaluation asked for without validation data: an error, not a run that silently never evaluates."""
    if validating:
        return
    if given.get("load_best_model_at_end"):
        raise OptionError("--load_best_model_at_end true needs validation data: give --valid_data")
    strategy = given.get("eval_strategy")
    if strategy is not None and str(getattr(strategy, "value", strategy)) != "no":
        raise OptionError(
            f"--eval_strategy {getattr(strategy, 'value', strategy)} needs validation data: give --valid_data"
        )
    if given.get("do_eval"):
        raise OptionError("--do_eval true needs validation data: give --valid_data")


def check_always_trains(given: dict[str, Any]) -> None:
    """`--do_train false` would be ignored (the switch of transformers' example scripts): refused."""
    if given.get("do_train", True) is False:
        raise OptionError(
            "--do_train false: examples/finetune.py always trains (to evaluate a model, use "
            "`funasr-nano-hf transcribe` on a manifest)"
        )


def check_unsupported_training_values(training_args: TrainingArguments) -> None:
    """TrainingArguments values this script cannot honour: an error with the reason, never ignored."""
    for name, (fine, reason) in UNSUPPORTED_TRAINING_VALUES.items():
        value = getattr(training_args, name)
        if value not in fine:
            raise OptionError(f"--{name} {value!r} is not supported: {reason}")


def choose_scheduler(finetune_args: FinetuneArguments, training_args: TrainingArguments, explicit: set[str]) -> None:
    """FunASR's warmuplr unless --lr_scheduler_type is given (then transformers' scheduler of that type); both
    --scheduler warmuplr and --lr_scheduler_type is a contradiction."""
    if "lr_scheduler_type" in explicit:
        if "scheduler" in explicit and finetune_args.scheduler == WARMUPLR:
            raise OptionError(
                f"--scheduler warmuplr and --lr_scheduler_type {training_args.lr_scheduler_type.value} both given: "
                "drop one (--lr_scheduler_type selects transformers' schedule, --scheduler warmuplr FunASR's)"
            )
        finetune_args.scheduler = HF_SCHEDULER
    if finetune_args.scheduler == WARMUPLR and training_args.warmup_steps <= 0:
        raise OptionError(
            f"--warmup_steps {training_args.warmup_steps:g}: FunASR's warmuplr needs a warm-up of at least 1 "
            "optimizer update (it divides by it); for a constant lr give --lr_scheduler_type constant"
        )


def finalize_training_args(
    training_args: TrainingArguments, validating: bool, explicit: Collection[str] = (), metric: str = "eval_cer"
) -> TrainingArguments:
    """The last adjustments once every option is known: DeepSpeed config (DeepSpeed fp16 refused, see
    `precision.apply_precision`), evaluation defaults (the options in `explicit` were given and are kept),
    world-size check. The LLM dtype and its mixed precision are settled once the model folder is known
    (`precision.apply_precision`)."""
    from .precision import check_deepspeed_precision

    refill_deepspeed_config(training_args)
    check_deepspeed_precision(training_args)
    apply_evaluation_defaults(training_args, validating, explicit, metric)
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


def apply_evaluation_defaults(
    training_args: TrainingArguments, validating: bool, explicit: Collection[str] = (), metric: str = "eval_cer"
) -> None:
    """With validation data: the best checkpoint is tracked by `metric` (the n-best ranking: CER by default, lower is
    better), and `final/` is the LAST weights, as FunASR's model.pt -- unless `--load_best_model_at_end` /
    `--metric_for_best_model` / `--greater_is_better` were given (`explicit`). Without: no evaluation at all (asking
    for it is an error: `check_validation_options`)."""
    if validating:
        if "load_best_model_at_end" not in explicit:
            training_args.load_best_model_at_end = False
        if "metric_for_best_model" not in explicit or not training_args.metric_for_best_model:
            training_args.metric_for_best_model = metric  # (transformers' own default is "loss")
        if "greater_is_better" not in explicit or training_args.greater_is_better is None:
            lower_is_better = ("cer", "wer", "mer", "loss")
            training_args.greater_is_better = not training_args.metric_for_best_model.endswith(lower_is_better)
        return
    training_args.eval_strategy = "no"
    training_args.do_eval = False
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
    """`config.yaml`: every option the run uses, by group (model, data, finetune, training), secrets redacted
    (a secret that was not set stays null). `--config` reads it back into the same options."""
    training = training_args.to_dict()  # enums as values; *_token replaced by placeholders
    for name in list(training):
        if name in NOT_SAVED:
            del training[name]
        elif is_secret_name(name):
            training[name] = None if getattr(training_args, name, None) is None else REDACTED
    if finetune_args.scheduler == WARMUPLR:
        del training["lr_scheduler_type"]  # unused under FunASR's warmuplr (and read back, it would select hf)
    finetune = asdict(finetune_args)
    finetune.pop("config")  # the file this run started from: its values are all here
    resolved = redact(
        {"model": asdict(model_args), "data": asdict(data_args), "finetune": finetune, "training": training}
    )
    Path(path).write_text(yaml.safe_dump(resolved, allow_unicode=True, sort_keys=False), encoding="utf-8")
