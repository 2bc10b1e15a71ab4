"""The model card (README.md) of every saved adapter or model -- checkpoints, ``final/``, ``final_merged/`` and the
pushed repository -- and the base-model fields of ``adapter_config.json`` that `peft.AutoPeftModel` reads.

The card is built with huggingface_hub's `ModelCard` / `ModelCardData` / `EvalResult` (so its metadata, the
``model-index`` included, is what the Hub parses); only the prose and the choice of fields are ours. Metadata
rules: ``base_model`` is a Hugging Face Hub id or absent (a local folder is not valid Hub metadata: it is named in
the text instead); the error rates go to ``model-index`` with the normaliser's name; ``pipeline_tag`` is
automatic-speech-recognition; the languages are the caller's, else the scripts found in the transcripts.

`peft` writes ``base_model_name_or_path`` from the base model's ``name_or_path`` (null for a model built from an
original FunASR folder) and ``auto_mapping`` from the model's Python class; `fix_adapter_config` rewrites both so
that ``AutoPeftModel.from_pretrained(folder)`` finds the base and a class that loads it (see its docstring).
"""

from __future__ import annotations

import dataclasses
import enum
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from ..data.featurize import FRAMES_PER_SECOND, plain
from ..evaluation import NORMALIZER_NAME, RATE_NAMES
from .secrets import redact

if TYPE_CHECKING:
    import datasets
    from huggingface_hub import ModelCard
    from transformers import TrainingArguments

    from .arguments import DataArguments, FinetuneArguments, ModelArguments

PIPELINE_TAG = "automatic-speech-recognition"
LIBRARY_TAGS = ("funasr_nano_hf", "fun-asr-nano", "transformers")
ADAPTER_CONFIG = "adapter_config.json"
# What `AutoPeftModel` imports to build the base (peft's ``auto_mapping``). An HF folder or Hub id of our layout
# loads through transformers' Auto class once ``import funasr_nano_hf`` registered our config; an ORIGINAL
# FunASR folder (config.yaml + model.pt) only through our class, which reads that layout.
HF_BASE_MAPPING = {"base_model_class": "AutoModelForSpeechSeq2Seq", "parent_library": "transformers"}
ORIGINAL_BASE_MAPPING = {"base_model_class": "FunAsrNanoHfForConditionalGeneration", "parent_library": "funasr_nano_hf"}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff]")
_LATIN_WORD = re.compile(r"[A-Za-z]{2,}")
LANGUAGE_SHARE = 0.05  # a script counts as a language of the data when this share of transcripts uses it


def hub_id(model_dir: str, hub: str = "hf") -> str | None:
    """`model_dir` when it names a Hugging Face Hub model (not an existing folder, ``Org/Name``, hub "hf")."""
    if hub != "hf" or Path(model_dir).exists() or not _HUB_ID.match(model_dir):
        return None
    return model_dir


def languages_of(texts: Iterable[str]) -> list[str]:
    """ISO 639-1 codes of the scripts in `texts`: "zh" for Chinese characters, "en" for Latin words, each when at
    least `LANGUAGE_SHARE` of the transcripts contain it (a guess from scripts, for data that says nothing)."""
    texts = list(texts)
    if not texts:
        return []
    found = []
    for code, pattern in (("zh", _CJK), ("en", _LATIN_WORD)):
        if sum(bool(pattern.search(text)) for text in texts) >= LANGUAGE_SHARE * len(texts):
            found.append(code)
    return found


def _plain(value: Any) -> Any:
    """`value` as YAML can write it (enums by value, other objects by str)."""
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return str(value)


def _non_default_options(args: Any) -> dict[str, Any]:
    """The dataclass fields of `args` whose value differs from the field's default (the resolved recipe without
    the hundred untouched TrainingArguments), secrets redacted."""
    changed = {}
    for spec in dataclasses.fields(args):
        if not spec.init or spec.name.startswith("_"):
            continue
        if spec.default is not dataclasses.MISSING:
            default = spec.default
        elif spec.default_factory is not dataclasses.MISSING:
            default = spec.default_factory()
        else:
            default = dataclasses.MISSING
        value = getattr(args, spec.name, None)
        if default is dataclasses.MISSING or _plain(value) != _plain(default):
            changed[spec.name] = _plain(value)
    return redact(changed)


@dataclass
class CardInfo:
    """What the model card says about a run, gathered when training starts and rendered whenever a model is saved
    or pushed."""

    base_model: str  # as given (--model_dir): a Hub id or a folder
    train_data: list[str]
    valid_data: list[str]
    train_examples: int = 0
    train_hours: float = 0.0
    valid_examples: int = 0
    valid_hours: float = 0.0
    use_lora: bool = True
    options: dict[str, Any] = field(default_factory=dict)  # the recipe's headline options (a table)
    recipe: dict[str, Any] = field(default_factory=dict)  # every option the run set, by group
    base_model_hub_id: str | None = None  # the Hugging Face Hub id of the base, when it came from there
    base_model_dir: str | None = None  # the local folder the base was loaded from
    base_layout: str | None = None  # "original" (FunASR's config.yaml + model.pt) or "hf"
    languages: list[str] = field(default_factory=list)
    license: str | None = None  # the base model card's, when it states one

    @property
    def base_reference(self) -> str:
        """How `adapter_config.json` names the base: the Hub id when known, else the absolute folder."""
        if self.base_model_hub_id:
            return self.base_model_hub_id
        return str(Path(self.base_model_dir or self.base_model).resolve())

    @classmethod
    def from_args(
        cls,
        model_args: ModelArguments,
        data_args: DataArguments,
        training_args: TrainingArguments,
        train_set: datasets.Dataset,
        valid_set: datasets.Dataset | None,
        *,
        model_dir: str | Path | None = None,
        finetune_args: FinetuneArguments | None = None,
    ) -> CardInfo:
        """The card info of a run: its options, the featurized train / validation sets, and the base (`model_dir`
        is the local folder the base was loaded from, when --model_dir was a Hub id)."""
        frozen = (
            ("audio_encoder", model_args.freeze_audio_encoder),
            ("audio_adaptor", model_args.freeze_audio_adaptor),
            ("llm", model_args.freeze_llm),
        )
        lora = "off"
        if model_args.use_lora:
            lora = (
                f"r={model_args.lora_r}, alpha={model_args.lora_alpha}, dropout={model_args.lora_dropout}, "
                f"targets={model_args.lora_target_modules}"
            )
        folder = Path(model_dir) if model_dir is not None else Path(model_args.model_dir)
        layout = None
        if folder.is_dir():
            from ..conversion.loading import detect_layout

            layout = detect_layout(folder)
        recipe = {
            "model": _plain(redact(dataclasses.asdict(model_args))),
            "data": _plain(redact(dataclasses.asdict(data_args))),
        }
        if finetune_args is not None:
            recipe["finetune"] = _plain(redact(dataclasses.asdict(finetune_args)))
        recipe["training (changed from transformers' defaults)"] = _non_default_options(training_args)
        texts = []  # the transcripts, for the card's languages (stored columns: no features computed)
        for dataset in (train_set, valid_set):
            if dataset is not None and "text" in (getattr(dataset, "column_names", None) or []):
                texts += list(plain(dataset)["text"])
        return cls(
            base_model=str(model_args.model_dir),
            train_data=[str(p) for p in data_args.train_data],
            valid_data=[str(p) for p in data_args.valid_data],
            # a stream (--streaming) has no count: the card shows 0
            train_examples=len(train_set) if hasattr(train_set, "__len__") else 0,
            train_hours=sum(plain(train_set)["num_frames"]) / FRAMES_PER_SECOND / 3600
            if hasattr(train_set, "__len__")
            else 0.0,
            valid_examples=len(valid_set) if valid_set is not None else 0,
            valid_hours=sum(plain(valid_set)["num_frames"]) / FRAMES_PER_SECOND / 3600
            if valid_set is not None
            else 0.0,
            use_lora=model_args.use_lora,
            options={
                "learning_rate": training_args.learning_rate,
                "num_train_epochs": training_args.num_train_epochs,
                "per_device_train_batch_size": training_args.per_device_train_batch_size,
                "gradient_accumulation_steps": training_args.gradient_accumulation_steps,
                "batch_type": data_args.batch_type,
                "llm_dtype": model_args.llm_dtype,
                "lora": lora,
                "frozen": ", ".join(name for name, is_frozen in frozen if is_frozen) or "none",
                # what the saved weights carry: LoRA matrices and/or whole modules (peft modules_to_save)
                "trained": ", ".join(
                    (["LoRA"] if model_args.use_lora else [])
                    + [f"{name} (full)" for name, is_frozen in frozen if not is_frozen]
                ),
                "seed": training_args.seed,
            },
            recipe=recipe,
            base_model_hub_id=hub_id(str(model_args.model_dir), getattr(model_args, "hub", "hf")),
            base_model_dir=str(folder.resolve()) if folder.is_dir() else None,
            base_layout=layout,
            languages=languages_of(texts),
            license=_license_of(folder) if folder.is_dir() else None,
        )


def _license_of(folder: Path) -> str | None:
    """The ``license`` of the model card in `folder` (a Hub snapshot's README.md), if it states one."""
    readme = folder / "README.md"
    if not readme.is_file():
        return None
    from huggingface_hub import ModelCard

    try:
        return ModelCard.load(readme, ignore_metadata_errors=True).data.license
    except Exception:  # a README without (valid) front matter: no license stated
        return None


@dataclass
class CardOptions:
    """The Trainer's ``create_model_card`` keyword arguments, which override what the run found."""

    language: str | list[str] | None = None
    license: str | None = None
    tags: str | list[str] | None = None
    model_name: str | None = None
    finetuned_from: str | None = None
    tasks: str | list[str] | None = None
    dataset_tags: str | list[str] | None = None
    dataset: str | list[str] | None = None
    dataset_args: str | list[str] | None = None

    @classmethod
    def from_kwargs(cls, kwargs: Mapping[str, Any]) -> CardOptions:
        names = {spec.name for spec in dataclasses.fields(cls)}
        unknown = sorted(set(kwargs) - names)
        if unknown:
            raise TypeError(f"create_model_card: unknown argument(s) {unknown}; known: {sorted(names)}")
        return cls(**kwargs)


def _as_list(value: str | list[str] | None) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def build_model_card(
    info: CardInfo,
    metrics: Mapping[str, float],
    model_name: str,
    *,
    merged: bool = False,
    options: CardOptions | None = None,
    repo_id: str | None = None,
) -> ModelCard:
    """The card of a saved adapter (``merged=False`` with LoRA) or model: metadata (base model, languages, license,
    datasets, pipeline tag, library tags, error rates as ``model-index``) and text (data, results, recipe, use:
    loaded from `repo_id`, the Hub repository, when given)."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    options = options or CardOptions()
    adapter = info.use_lora and not merged
    base_hub = options.finetuned_from if options.finetuned_from and _HUB_ID.match(options.finetuned_from) else None
    base_hub = base_hub or info.base_model_hub_id
    base_text = options.finetuned_from or info.base_model_hub_id or info.base_model
    task = (_as_list(options.tasks) or [PIPELINE_TAG])[0]
    dataset_tags = _as_list(options.dataset_tags)
    # metadata names the validation files, not their local folders
    dataset_name = ", ".join(_as_list(options.dataset)) or ", ".join(Path(p).name for p in info.valid_data)
    dataset_name = dataset_name or "validation"
    dataset_args = _as_list(options.dataset_args)
    eval_results = []
    for rate in RATE_NAMES:
        value = metrics.get(f"eval_{rate}")
        if value is None:
            continue
        eval_results.append(
            EvalResult(
                task_type=task,
                dataset_type=dataset_tags[0] if dataset_tags else "custom",
                dataset_name=dataset_name,
                dataset_args={"config": dataset_args[0]} if dataset_args else None,
                metric_type=rate,
                metric_value=round(float(value), 6),
                metric_name=f"{rate.upper()} ({NORMALIZER_NAME})",  # the card's text says what each rate counts
            )
        )
    tags = list(LIBRARY_TAGS) + (["peft", "lora"] if adapter else []) + [PIPELINE_TAG]
    tags += [tag for tag in _as_list(options.tags) if tag not in tags]
    data = ModelCardData(
        base_model=base_hub,
        datasets=dataset_tags or None,
        language=_as_list(options.language) or info.languages or None,
        license=options.license or info.license,
        library_name="peft" if adapter else "transformers",
        metrics=[result.metric_type for result in eval_results] or None,
        model_name=model_name if eval_results else None,
        pipeline_tag=PIPELINE_TAG,
        tags=tags,
        eval_results=eval_results or None,
    )
    text = _card_text(info, metrics, model_name, adapter, base_text, repo_id)
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{text}")


def _card_text(
    info: CardInfo, metrics: Mapping[str, float], model_name: str, adapter: bool, base: str, repo_id: str | None
) -> str:
    kind = "a LoRA adapter (peft)" if adapter else "the full model (LoRA merged)" if info.use_lora else "full weights"
    lines = [
        f"# {model_name}",
        "",
        f"Fun-ASR-Nano fine-tuned from `{base}` with [funasr_nano_hf](https://pypi.org/project/funasr-nano-hf/): "
        f"{kind}.",
    ]
    if not info.base_model_hub_id:
        lines += ["", f"The base model was loaded from the local folder `{info.base_reference}`."]
    lines += [
        "",
        "## Data",
        "",
        f"- train: {', '.join(info.train_data)} — {info.train_examples} utterances, {info.train_hours:.2f} h",
        f"- validation: {', '.join(info.valid_data) or '(none)'} — {info.valid_examples} utterances, "
        f"{info.valid_hours:.2f} h",
        f"- language(s): {', '.join(info.languages) or 'not detected'}",
        "",
        "## Results",
        "",
    ]
    scores = {k: v for k, v in sorted(metrics.items()) if isinstance(v, (int, float)) and not isinstance(v, bool)}
    if scores:
        lines += ["| metric | value |", "|---|---|"] + [f"| {key} | {value:.6g} |" for key, value in scores.items()]
    else:
        lines.append("No evaluation yet.")
    lines += [
        "",
        f"Error rates after the `{NORMALIZER_NAME}` normaliser (NFKC, lower case, punctuation removed): "
        + "; ".join(f"{name.upper()} = {description}" for name, description in RATE_NAMES.items())
        + ". Greedy decoding of the validation set.",
        "",
        "## Training recipe",
        "",
        "| option | value |",
        "|---|---|",
    ]
    lines += [f"| {key} | {value} |" for key, value in info.options.items()]
    if info.recipe:
        lines += [
            "",
            "<details><summary>Every option the run set (the run's config.yaml, secrets redacted)</summary>",
            "",
            "```yaml",
            yaml.safe_dump(info.recipe, allow_unicode=True, sort_keys=False).strip(),
            "```",
            "",
            "</details>",
        ]
    where = repo_id or "path/to/this/folder"
    lines += ["", "## Use", "", "```python", "import funasr_nano_hf  # registers the model with transformers"]
    if adapter:
        allow = ', import_allowlist=["funasr_nano_hf"]' if info.base_layout == "original" else ""
        lines += [
            "from peft import AutoPeftModel",
            "from transformers import AutoProcessor",
            "",
            f'model = AutoPeftModel.from_pretrained("{where}"{allow})',
            f'processor = AutoProcessor.from_pretrained("{where}")',
        ]
    else:
        lines += [f'model, processor = funasr_nano_hf.load_pretrained("{where}")']
    lines += ['print(funasr_nano_hf.transcribe(model, processor, ["audio.wav"]))', "```", ""]
    return "\n".join(lines)


def fix_adapter_config(folder: str | Path, info: CardInfo) -> None:
    """Name the base in `folder`'s adapter_config.json for `peft.AutoPeftModel`: ``base_model_name_or_path`` = the
    Hub id when known, else the absolute base folder; ``auto_mapping`` = transformers' ``AutoModelForSpeechSeq2Seq``
    for an HF-layout base (works after ``import funasr_nano_hf``), our ``FunAsrNanoHfForConditionalGeneration``
    for an original FunASR folder (peft then needs ``import_allowlist=["funasr_nano_hf"]``: it imports only
    allow-listed packages named in a config). No-op without adapter_config.json."""
    path = Path(folder) / ADAPTER_CONFIG
    if not path.is_file():
        return
    config = json.loads(path.read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = info.base_reference
    if config.get("task_type") is None:
        config["auto_mapping"] = dict(ORIGINAL_BASE_MAPPING if info.base_layout == "original" else HF_BASE_MAPPING)
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
