"""FunASR's option forms, read into this package's flat option names.

FunASR's `train_ds.py` takes hydra overrides (``++train_conf.max_epoch=10``) merged over a nested YAML
(``train_conf:``, ``dataset_conf:``, ``optim_conf:``, ``scheduler_conf:``, ``llm_conf: {lora_conf: ...}``,
``audio_encoder_conf.freeze``, ...), the layout of a model folder's own ``config.yaml`` too. `FUNASR_KEYS` says
what each FunASR key is here:

- `Mapped`: sets our option(s) (``train_conf.max_epoch`` -> ``max_epoch``, ``optim_conf.betas`` -> ``adam_beta1`` +
  ``adam_beta2``, ``llm_conf.lora_conf.target_modules`` list -> ``lora_target_modules``);
- `Refused`: deliberately not supported, with the reason and the remedy; the values FunASR itself treats as a
  no-op (e.g. ``train_conf.use_deepspeed: false`` in a model's config.yaml) are accepted;
- `ModelKey`: describes the architecture (``audio_encoder_conf.output_size``, ``frontend_conf``, ...), which comes
  from the model folder: skipped in a config file (logged), an error as a command-line override.

A key is looked up whole, then by its ever shorter dotted prefixes (``llm_conf.hub`` -> ``llm_conf``), so a
section entry covers the keys under it.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

# The model class of a FunASR config.yaml (`model: FunASRNano`): not a folder.
FUNASR_MODEL_CLASS = "FunASRNano"
# FunASR's `scheduler` names -> our `--scheduler` (training/schedulers.py implements FunASR's warmuplr exactly;
# transformers' inverse_sqrt is the same curve one update late).
SCHEDULER_NAMES: dict[str, str | None] = {"warmuplr": "warmuplr"}
# FunASR's `optim` names -> `--optim` (torch.optim.AdamW / SGD); None: no transformers equivalent. AdamW runs as
# torch's fused kernel (one kernel over all trained tensors instead of a loop of small ops per LoRA matrix; the
# same update; transformers' own default on torch >= 2.8).
OPTIMIZER_NAMES: dict[str, str | None] = {"adamw": "adamw_torch_fused", "sgd": "sgd", "adam": None}
ANY = object()  # `Refused.accepted`: every value is a no-op (FunASR reads the key but it changes nothing here)


class OptionError(ValueError):
    """A bad option: the message names the option (and file) and the remedy."""


@dataclass(frozen=True)
class Mapped:
    """A FunASR key that sets our `option`; `convert(value)` -> {option: value} when it is not a plain copy."""

    option: str | None = None
    convert: Callable[[Any], dict[str, Any]] | None = None

    def options(self, value: Any) -> dict[str, Any]:
        return self.convert(value) if self.convert else {self.option: value}


@dataclass(frozen=True)
class Refused:
    """A FunASR key deliberately not supported; `accepted` values are no-ops here (FunASR's defaults)."""

    reason: str
    accepted: Any = ()

    def accepts(self, value: Any) -> bool:
        return self.accepted is ANY or any(value == ok and type(value) is type(ok) for ok in self.accepted)


@dataclass(frozen=True)
class ModelKey:
    """Part of the model description: the architecture comes from the model folder (`--model_dir`)."""

    reason: str = "it describes the model architecture, which is read from the model folder (--model_dir)"


def _target_modules(value: Any) -> dict[str, Any]:
    """FunASR's list (or peft's comma string) -> `lora_target_modules` "q_proj,v_proj"."""
    if isinstance(value, str):
        value = [part for part in re.split(r"[,\s]+", value.strip("[]")) if part]
        value = [part.strip("'\"") for part in value]
    if not isinstance(value, (list, tuple)) or not value or not all(isinstance(v, str) for v in value):
        raise OptionError(f"llm_conf.lora_conf.target_modules: a list of module names, got {value!r}")
    return {"lora_target_modules": ",".join(value)}


def _betas(value: Any) -> dict[str, Any]:
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise OptionError(f"optim_conf.betas: a pair [beta1, beta2], got {value!r}")
    return {"adam_beta1": float(value[0]), "adam_beta2": float(value[1])}


def _named(table: dict[str, str | None], option: str, key: str) -> Callable[[Any], dict[str, Any]]:
    """FunASR's name -> ours; where the key is also our option (`optim`), our own names pass through."""

    def convert(value: Any) -> dict[str, Any]:
        if value not in table and key == option:
            return {option: value}
        if table.get(value) is None:
            supported = sorted(name for name, ours in table.items() if ours)
            raise OptionError(f"{key}: {value!r} is not supported; supported: {supported} (or set --{option} directly)")
        return {option: table[value]}

    return convert


def _lora_only(value: Any) -> dict[str, Any]:
    """FunASR's lora_only=true trains only the LoRA matrices: every module frozen."""
    if value is True:
        return {"freeze_audio_encoder": True, "freeze_audio_adaptor": True, "freeze_llm": True, "use_lora": True}
    if value is False:
        return {}
    raise OptionError(f"lora_only: true or false, got {value!r}")


def _use_deepspeed(value: Any) -> dict[str, Any]:
    if value is True:
        raise OptionError(
            "train_conf.use_deepspeed=true: DeepSpeed runs when its config is given: "
            "train_conf.deepspeed_config=PATH or --deepspeed PATH (launched with accelerate launch / torchrun)"
        )
    return {}


_MODEL = ModelKey()

FUNASR_KEYS: dict[str, Mapped | Refused | ModelKey] = {
    # -- top level ------------------------------------------------------------------------------------------
    "model": Mapped("model_dir"),  # a folder; `FunASRNano` (a config.yaml's model class) is handled by the reader
    "train_data_set_list": Mapped("train_data"),
    "valid_data_set_list": Mapped("valid_data"),
    "output_dir": Mapped("output_dir"),
    "seed": Mapped("seed"),
    "enable_tf32": Mapped("tf32"),
    "lora_only": Mapped(convert=_lora_only),
    "init_param": Refused("the weights come from the model folder's model.pt (--model_dir)"),
    "freeze_param": Refused("freeze whole parts with --freeze_audio_encoder / --freeze_audio_adaptor / --freeze_llm"),
    "lora_bias": Refused("LoRA adapters have no bias terms here (peft bias='none')", accepted=("none",)),
    "device": Refused("the device comes from the launcher (GPU when present; --use_cpu for CPU)"),
    "hub": Refused("the model is a local folder (--model_dir)", accepted=ANY),
    "is_training": Refused("examples/finetune.py always trains", accepted=(True,)),
    "cudnn_enabled": Refused("cuDNN flags are PyTorch's defaults here", accepted=ANY),
    "cudnn_benchmark": Refused("cuDNN flags are PyTorch's defaults here", accepted=ANY),
    "cudnn_deterministic": Refused("use --full_determinism true", accepted=(True, False)),
    "backend": Refused("use --ddp_backend"),
    "dataset": Refused("manifests are read by funasr_nano_hf.data.readers", accepted=("FunASR",)),
    "optim": Mapped(convert=_named(OPTIMIZER_NAMES, "optim", "optim")),
    "scheduler": Mapped(convert=_named(SCHEDULER_NAMES, "scheduler", "scheduler")),
    # -- train_conf -----------------------------------------------------------------------------------------
    "train_conf.max_epoch": Mapped("max_epoch"),
    "train_conf.log_interval": Mapped("log_interval"),
    "train_conf.validate_interval": Mapped("validate_interval"),
    "train_conf.save_checkpoint_interval": Mapped("save_checkpoint_interval"),
    "train_conf.keep_nbest_models": Mapped("keep_nbest_models"),
    "train_conf.avg_nbest_model": Mapped("avg_nbest_model"),
    "train_conf.early_stopping_patience": Mapped("early_stopping_patience"),
    "train_conf.resume": Mapped("resume"),
    "train_conf.accum_grad": Mapped("accum_grad"),
    "train_conf.grad_clip": Mapped("grad_clip"),
    "train_conf.use_fp16": Mapped("fp16"),
    "train_conf.use_bf16": Mapped("bf16"),
    "train_conf.deepspeed_config": Mapped("deepspeed"),
    "train_conf.find_unused_parameters": Mapped("ddp_find_unused_parameters"),
    "train_conf.use_deepspeed": Mapped(convert=_use_deepspeed),
    "train_conf.use_ddp": Refused("DDP is used when launched with several processes", accepted=(True, False)),
    "train_conf.use_fsdp": Refused("FSDP: use transformers' --fsdp / --fsdp_config", accepted=(False,)),
    "train_conf.grad_clip_type": Refused(
        "gradients are clipped by their 2-norm (--grad_clip / --max_grad_norm)", accepted=(2, 2.0)
    ),
    "train_conf.avg_keep_nbest_models_type": Mapped("avg_keep_nbest_models_type"),
    "train_conf.effective_save_name_excludes": Refused(
        "checkpoints hold exactly the trained weights (LoRA adapter / trained modules)", accepted=(None, "None")
    ),
    "train_conf.excludes": Refused("the weights come whole from the model folder", accepted=(None, "None")),
    "train_conf.reset_gpu_cache": Refused("use --torch_empty_cache_steps N", accepted=(False,)),
    "train_conf.use_wandb": Refused("use --report_to wandb (and --run_name)", accepted=(False,)),
    "train_conf.wandb_project": Refused("use --report_to wandb with WANDB_PROJECT"),
    "train_conf.wandb_team": Refused("use --report_to wandb with WANDB_ENTITY"),
    "train_conf.wandb_exp_name": Refused("use --report_to wandb --run_name NAME"),
    "train_conf.wandb_token": Refused("use --report_to wandb with WANDB_API_KEY in the environment"),
    # -- dataset_conf ---------------------------------------------------------------------------------------
    "dataset_conf.batch_size": Mapped("batch_size"),
    "dataset_conf.batch_type": Mapped("batch_type"),
    "dataset_conf.num_workers": Mapped("num_workers"),
    "dataset_conf.max_source_length": Mapped("max_source_length"),
    "dataset_conf.max_target_length": Mapped("max_target_length"),
    "dataset_conf.min_source_length": Mapped("min_source_length"),
    "dataset_conf.pin_memory": Mapped("dataloader_pin_memory"),
    "dataset_conf.persistent_workers": Mapped("dataloader_persistent_workers"),
    "dataset_conf.prefetch_factor": Refused("the training loader uses PyTorch's prefetch (2)", accepted=(2,)),
    "dataset_conf.shuffle": Refused("training batches are always shuffled (seeded per epoch)", accepted=(True,)),
    "dataset_conf.index_ds": Refused(
        "manifests are read by funasr_nano_hf.data.readers", accepted=("FunASR", "IndexDSJsonl")
    ),
    "dataset_conf.batch_sampler": Refused(
        "batches come from FunASR's batch sampler, chosen by --batch_type", accepted=("BatchSampler",)
    ),
    "dataset_conf.dataloader": Refused(
        "data is featurized once into a datasets cache", accepted=("DataloaderMapStyle",)
    ),
    "dataset_conf.data_split_num": Refused("data is featurized once into a datasets cache; no splits", accepted=(1,)),
    "dataset_conf.retry": Refused("bad samples are found before training (--on_bad_data), not retried", accepted=ANY),
    "dataset_conf.batch_size_scale_ratio_max": Refused("FunASR reads it but never uses it", accepted=ANY),
    "dataset_conf.use_dynamic_output_ratio": Refused("not supported", accepted=(0, 0.0)),
    "dataset_conf.do_think": Refused("the prompt never has a think block here", accepted=(True,)),
    "dataset_conf.sort_size": Mapped("sort_size"),
    "dataset_conf.max_token_length": Mapped("max_token_length"),
    "dataset_conf.batch_size_sample_max": Mapped("batch_size_sample_max"),
    "dataset_conf.batch_size_token_max": Refused(
        "not supported: FunASR's collator-level drop of the longest examples; --batch_size is the padded budget "
        "under --batch_type length/token"
    ),
    "dataset_conf.min_target_length": Refused("transcripts shorter than one token are always dropped", accepted=(0, 1)),
    "dataset_conf.prompt_classes": Refused("the prompt is the manifest's instruction (models/prompting.py)"),
    "dataset_conf.prompt_conf": Refused("the prompt is the manifest's instruction (models/prompting.py)"),
    "dataset_conf.sys_prompt": Refused("the system prompt is FunASR's default (models/prompting.py)"),
    "dataset_conf.preprocessor_speech": Refused(
        "FunASR's Nano dataset never applies it; speed perturbation here: --speed_perturb 0.9,1.0,1.1"
    ),
    # FunASRNano has no specaug: FunASR ignores these keys (a config.yaml's are ignored here too); on the command
    # line they would do nothing in FunASR, so they are refused with the option that does it here.
    **dict.fromkeys(
        ("specaug", "specaug_conf"),
        ModelKey(
            "FunASR's FunASRNano applies no SpecAugment (it ignores specaug keys); SpecAugment here: "
            "--specaug true --specaug_conf '{...SpecAugLFR fields...}'"
        ),  # fmt: skip
    ),
    "dataset_conf.preprocessor_text": Refused("no text preprocessing"),
    "dataset_conf.preprocessor_noise": Refused("no noise augmentation", accepted=(None,)),
    "dataset_conf.multiturn_num_max": Refused("single-turn ASR only"),
    "dataset_conf.audio_adaptor_downsample_rate": _MODEL,
    "dataset_conf.audio_encoder_downsample_rate": _MODEL,
    "dataset_conf.ctc_tokenizer": _MODEL,
    "dataset_conf.ctc_tokenizer_conf": _MODEL,
    "dataset_conf.ctc_target_normalize": _MODEL,
    # -- optim_conf / scheduler_conf ------------------------------------------------------------------------
    "optim_conf.lr": Mapped("lr"),
    "optim_conf.weight_decay": Mapped("weight_decay"),
    "optim_conf.betas": Mapped(convert=_betas),
    "optim_conf.eps": Mapped("adam_epsilon"),
    "scheduler_conf.warmup_steps": Mapped("warmup_steps"),
    # -- llm_conf -------------------------------------------------------------------------------------------
    "llm_conf.use_lora": Mapped("use_lora"),
    "llm_conf.llm_dtype": Mapped("llm_dtype"),
    "llm_conf.freeze": Mapped("freeze_llm"),
    "llm_conf.activation_checkpoint": Mapped("activation_checkpoint"),
    "llm_conf.lora_conf.r": Mapped("lora_r"),
    "llm_conf.lora_conf.lora_alpha": Mapped("lora_alpha"),
    "llm_conf.lora_conf.lora_dropout": Mapped("lora_dropout"),
    "llm_conf.lora_conf.target_modules": Mapped(convert=_target_modules),
    "llm_conf.lora_conf.task_type": Refused("the adapter is on the LLM (a causal LM)", accepted=("CAUSAL_LM",)),
    "llm_conf.lora_conf.freeze_lora": Refused(
        "a frozen LoRA trains nothing; use --use_lora false instead", accepted=(False,)
    ),
    "llm_conf.lora_conf.bias": Refused("LoRA adapters have no bias terms here (peft bias='none')", accepted=("none",)),
    "llm_conf": _MODEL,
    # -- audio encoder / adaptor ----------------------------------------------------------------------------
    "audio_encoder_conf.freeze": Mapped("freeze_audio_encoder"),
    "audio_encoder_conf.activation_checkpoint": Refused(
        "activation checkpointing: --activation_checkpoint (LLM) or --activation_checkpointing (whole model)",
        accepted=(False,),
    ),
    "audio_encoder_conf": _MODEL,
    "audio_adaptor_conf.freeze": Mapped("freeze_audio_adaptor"),
    "audio_adaptor_conf": _MODEL,
    # -- the rest of a model folder's config.yaml -----------------------------------------------------------
    **{
        key: _MODEL
        for key in (
            "model_conf",
            "audio_encoder",
            "audio_adaptor",
            "llm",
            "frontend",
            "frontend_conf",
            "tokenizer",
            "tokenizer_conf",
            "ctc_decoder",
            "ctc_decoder_conf",
            "ctc_conf",
            "ctc_weight",
            "normalize",
            "normalize_conf",
            "input_size",
        )
    },
}

# The FunASR sections whose keys are looked up one by one (everything else is a leaf).
SECTIONS = (
    "train_conf",
    "dataset_conf",
    "optim_conf",
    "scheduler_conf",
    "llm_conf",
    "llm_conf.lora_conf",
    "audio_encoder_conf",
    "audio_adaptor_conf",
)


def lookup(key: str) -> tuple[str, Mapped | Refused | ModelKey] | None:
    """(the table key, its entry) for `key` or its nearest dotted prefix; None when FunASR has no such key."""
    parts = key.split(".")
    for end in range(len(parts), 0, -1):
        prefix = ".".join(parts[:end])
        if prefix in FUNASR_KEYS:
            return prefix, FUNASR_KEYS[prefix]
    return None


def funasr_key_of(option: str) -> str | None:
    """The FunASR key that sets `option` (for --help), if one does."""
    for key, entry in FUNASR_KEYS.items():
        if isinstance(entry, Mapped) and entry.option == option:
            return key
    return None


def flatten(tree: dict[str, Any], own_options: Iterable[str], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, value) of a nested FunASR config: a FunASR section is walked into; our own option names and
    other keys are leaves (their values may be dicts: --deepspeed, --lr_scheduler_kwargs, ...)."""
    own = set(own_options)
    for key, value in tree.items():
        if not isinstance(key, str):
            raise OptionError(f"{prefix}{key!r}: option names are strings")
        dotted = f"{prefix}{key}"
        if dotted in SECTIONS and value is None:  # an empty section
            continue
        if isinstance(value, dict) and (dotted in SECTIONS or (not prefix and dotted not in own)):
            if dotted not in SECTIONS and lookup(dotted) is not None:  # a whole section FunASR defines as one entry
                yield dotted, value
                continue
            yield from flatten(value, own, dotted + ".")
        else:
            yield dotted, value


def suggestion(key: str, candidates: Iterable[str]) -> str:
    """' (did you mean X?)' with the closest known name (difflib), or ''."""
    candidates = sorted(set(candidates))
    leaf = key.rsplit(".", 1)[-1].lstrip("-+")
    for probe in (key.lstrip("-+"), leaf):
        match = difflib.get_close_matches(probe, candidates, n=1, cutoff=0.6)
        if match:
            return f" (did you mean {match[0]}?)"
    return ""


def parse_override_value(raw: str) -> Any:
    """A hydra override's value as hydra reads it: quoted -> string, true/false, null, int, float, [list]/{dict}
    (YAML flow syntax); anything else is the string itself (paths, names)."""
    text = raw.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("null", "~", "none"):
        return None
    if re.fullmatch(r"[-+]?\d+", text):
        return int(text)
    if re.fullmatch(r"[-+]?(\d+\.\d*|\.\d+|\d+)([eE][-+]?\d+)?|[-+]?(inf|nan)", text, re.IGNORECASE):
        return float(text)
    if text[:1] in "[{":
        import yaml

        try:
            return yaml.safe_load(text)
        except yaml.YAMLError:
            try:
                return json.loads(text)
            except json.JSONDecodeError as err:
                raise OptionError(f"cannot read the value {raw!r} ({err})") from None
    return text


@dataclass
class Translated:
    """FunASR keys read into our options: `values` {option: value}; the architecture keys that were skipped."""

    values: dict[str, Any] = field(default_factory=dict)
    model_keys: list[str] = field(default_factory=list)
    model_class: str | None = None


def translate(
    pairs: Iterable[tuple[str, Any]], own_options: Iterable[str], where: str, *, command_line: bool
) -> Translated:
    """FunASR (dotted) or our own keys -> our options. `where` names the source in errors ("--config x.yaml",
    "command line"). Architecture keys are skipped in a file and refused on the command line."""
    own = set(own_options)
    result = Translated()
    for key, value in pairs:
        if key in own and key not in FUNASR_KEYS:
            _put(result.values, key, value, key, where)
            continue
        found = lookup(key)
        if found is None:
            raise OptionError(
                f"{where}: unknown option {key!r}{suggestion(key, own | set(FUNASR_KEYS))}; "
                "see examples/finetune.py --help"
            )
        table_key, entry = found
        if table_key == "model" and value == FUNASR_MODEL_CLASS:
            result.model_class = value  # a model folder's config.yaml: `model` is the class, not a folder
            continue
        if isinstance(entry, ModelKey):
            if command_line:
                raise OptionError(f"{where}: {key} cannot be set: {entry.reason}")
            result.model_keys.append(key)
        elif isinstance(entry, Refused):
            if not entry.accepts(value):
                raise OptionError(f"{where}: {key}={value!r} is not supported: {entry.reason}")
        else:
            for option, converted in entry.options(value).items():
                _put(result.values, option, converted, key, where)
    return result


def _put(values: dict[str, Any], option: str, value: Any, key: str, where: str) -> None:
    """One source sets each option once (a FunASR key and its flat name, or an alias, disagreeing is an error)."""
    if option in values and values[option] != value:
        raise OptionError(f"{where}: {key} sets {option}={value!r}, but it is also set to {values[option]!r}")
    values[option] = value
