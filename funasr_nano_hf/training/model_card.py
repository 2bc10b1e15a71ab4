"""The model card pushed with a fine-tuned adapter: base model, data, CER (with its normaliser), arguments."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import yaml

from ..data.featurize import FRAMES_PER_SECOND, plain
from ..evaluation import NORMALIZER_NAME

if TYPE_CHECKING:
    import datasets
    from transformers import TrainingArguments

    from .arguments import DataArguments, ModelArguments


@dataclass
class CardInfo:
    """What the model card says about a run, gathered when training starts and rendered when the model is pushed."""

    base_model: str
    train_data: list[str]
    valid_data: list[str]
    train_examples: int = 0
    train_hours: float = 0.0
    valid_examples: int = 0
    use_lora: bool = True
    options: dict[str, Any] = field(default_factory=dict)  # the training options worth showing

    @classmethod
    def from_args(
        cls,
        model_args: ModelArguments,
        data_args: DataArguments,
        training_args: TrainingArguments,
        train_set: datasets.Dataset,
        valid_set: datasets.Dataset | None,
    ) -> CardInfo:
        """The card info of a run: its options and the featurized train / validation sets."""
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
        return cls(
            base_model=model_args.model_dir,
            train_data=list(data_args.train_data),
            valid_data=list(data_args.valid_data),
            # a stream (--streaming) has no count: the card shows 0
            train_examples=len(train_set) if hasattr(train_set, "__len__") else 0,
            train_hours=sum(plain(train_set)["num_frames"]) / FRAMES_PER_SECOND / 3600
            if hasattr(train_set, "__len__")
            else 0.0,
            valid_examples=len(valid_set) if valid_set is not None else 0,
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
        )


def render_model_card(info: CardInfo, metrics: dict[str, float], model_name: str) -> str:
    """README.md of the pushed model: front matter (model-index with the CER), data, results, options, usage."""
    cer = metrics.get("eval_cer")
    tags = ["automatic-speech-recognition", "fun-asr-nano", "funasr_nano_hf"] + (["lora"] if info.use_lora else [])
    front = {
        "base_model": info.base_model,
        "library_name": "peft" if info.use_lora else "transformers",
        "tags": tags,
        "metrics": ["cer"],
    }
    if cer is not None:
        front["model-index"] = [
            {
                "name": model_name,
                "results": [
                    {
                        "task": {"type": "automatic-speech-recognition"},
                        "dataset": {"name": ", ".join(info.valid_data) or "validation", "type": "custom"},
                        "metrics": [{"type": "cer", "value": round(float(cer), 6), "name": f"CER ({NORMALIZER_NAME})"}],
                    }
                ],
            }
        ]
    lines = [
        "---",
        yaml.safe_dump(front, allow_unicode=True, sort_keys=False).strip(),
        "---",
        "",
        f"# {model_name}",
        "",
        f"Fun-ASR-Nano fine-tuned from `{info.base_model}` with "
        f"[funasr_nano_hf]({'https://pypi.org/project/funasr-nano-hf/'}) "
        f"({'LoRA adapter' if info.use_lora else 'full weights'}).",
        "",
        "## Data",
        "",
        f"- train: {', '.join(info.train_data)} — {info.train_examples} utterances, {info.train_hours:.2f} h",
        f"- validation: {', '.join(info.valid_data) or '(none)'} — {info.valid_examples} utterances",
        "",
        "## Results",
        "",
        "| metric | value |",
        "|---|---|",
    ]
    for key in sorted(metrics):
        if key.startswith("eval_") and isinstance(metrics[key], (int, float)):
            lines.append(f"| {key} | {metrics[key]:.6g} |")
    lines += [
        "",
        f"CER is computed after the `{NORMALIZER_NAME}` normaliser (NFKC, lower case, punctuation "
        "removed; Chinese by character, other scripts by word).",
        "",
        "## Training arguments",
        "",
        "| option | value |",
        "|---|---|",
    ]
    lines += [f"| {key} | {value} |" for key, value in info.options.items()]
    lines += [
        "",
        "## Use",
        "",
        "```python",
        "import funasr_nano_hf",
        f'model, processor = funasr_nano_hf.load_pretrained("{info.base_model}")',
    ]
    if info.use_lora:
        lines += ["from peft import PeftModel", f'model = PeftModel.from_pretrained(model, "{model_name}")']
    lines += ['print(funasr_nano_hf.transcribe(model, processor, ["audio.wav"]))', "```", ""]
    return "\n".join(lines)
