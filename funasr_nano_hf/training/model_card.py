"""The model card pushed with a fine-tuned adapter: base model, data, CER (with its normaliser), arguments."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

from ..evaluation import NORMALIZER_NAME


@dataclass
class CardInfo:
    base_model: str
    train_data: list[str]
    valid_data: list[str]
    train_examples: int = 0
    train_hours: float = 0.0
    valid_examples: int = 0
    use_lora: bool = True
    options: dict[str, Any] = field(default_factory=dict)  # the training options worth showing


def render_model_card(info: CardInfo, metrics: dict[str, float], model_name: str) -> str:
    cer = metrics.get("eval_cer")
    front = {
        "base_model": info.base_model,
        "library_name": "peft" if info.use_lora else "transformers",
        "tags": ["automatic-speech-recognition", "fun-asr-nano", "funasr_nano_hf"] + (["lora"] if info.use_lora else []),
        "metrics": ["cer"],
    }
    if cer is not None:
        front["model-index"] = [{
            "name": model_name,
            "results": [{
                "task": {"type": "automatic-speech-recognition"},
                "dataset": {"name": ", ".join(info.valid_data) or "validation", "type": "custom"},
                "metrics": [{"type": "cer", "value": round(float(cer), 6), "name": f"CER ({NORMALIZER_NAME})"}],
            }],
        }]
    lines = [
        "---", yaml.safe_dump(front, allow_unicode=True, sort_keys=False).strip(), "---", "",
        f"# {model_name}", "",
        f"Fun-ASR-Nano fine-tuned from `{info.base_model}` with "
        f"[funasr_nano_hf]({'https://pypi.org/project/funasr-nano-hf/'}) "
        f"({'LoRA adapter' if info.use_lora else 'full weights'}).", "",
        "## Data", "",
        f"- train: {', '.join(info.train_data)} — {info.train_examples} utterances, {info.train_hours:.2f} h",
        f"- validation: {', '.join(info.valid_data) or '(none)'} — {info.valid_examples} utterances", "",
        "## Results", "",
        "| metric | value |", "|---|---|",
    ]
    for key in sorted(metrics):
        if key.startswith("eval_") and isinstance(metrics[key], (int, float)):
            lines.append(f"| {key} | {metrics[key]:.6g} |")
    lines += ["", f"CER is computed after the `{NORMALIZER_NAME}` normaliser (NFKC, lower case, punctuation "
              "removed; Chinese by character, other scripts by word).", "", "## Training arguments", "",
              "| option | value |", "|---|---|"]
    lines += [f"| {key} | {value} |" for key, value in info.options.items()]
    lines += ["", "## Use", "", "```python", "import funasr_nano_hf",
              f'model, processor = funasr_nano_hf.load_pretrained("{info.base_model}")']
    if info.use_lora:
        lines += ["from peft import PeftModel", f'model = PeftModel.from_pretrained(model, "{model_name}")']
    lines += ['print(funasr_nano_hf.transcribe(model, processor, ["audio.wav"]))', "```", ""]
    return "\n".join(lines)
