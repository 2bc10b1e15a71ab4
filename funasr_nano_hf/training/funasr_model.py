"""The run's final model in FunASR's own layout, at the top of the output folder, beside the HF artefacts.

FunASR's training leaves ``model.pt`` in its output folder (the guide: "model.pt  # 最终模型", the final
model), which ``funasr.AutoModel`` loads. `write_funasr_model` writes the same for a fine-tune: the final model
(``final/``: the adapter merged into the base, or the full model) mapped back onto the base's ``model.pt`` by
`conversion.export.export_funasr` (every tensor in the base's dtype, tensors the fine-tune did not change
bit-identical, FunASR's CTC branch copied). Next to it:

* ``funasr_config.yaml`` -- the base's FunASR config (the top-level ``config.yaml`` holds the run's options);
* ``configuration.json`` -- FunASR's index of a model folder, copied from the base as FunASR's training does,
  pointing at ``funasr_config.yaml`` and ``model.pt`` (FunASR's AutoModel reads it before any config.yaml;
  `conversion.loading.original_config_path` follows it too, so `load_pretrained(output_dir)` works);
* the base's other files (``Qwen3-0.6B/``: the LLM's config and tokenizer, ``multilingual.tiktoken``, ...),
  so ``AutoModel(model=output_dir)`` needs nothing else. Hidden files and ``README.md`` are not copied.

Either ``AutoModel(model=output_dir)`` or FunASR's usual ``AutoModel(model=<base>, init_param=output_dir/model.pt)``
loads it. The base must be an ORIGINAL FunASR folder (its ``model.pt`` is the template); from an HF folder
there is none, and `funasr_export_command` says how to export later.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from ..conversion.export import export_funasr
from ..conversion.loading import original_config_path
from .checkpointing import remove_directory, staging_path

logger = logging.getLogger(__name__)

FUNASR_CONFIG_NAME = "funasr_config.yaml"
_NOT_COPIED = {"model.pt", "config.yaml", "configuration.json", "README.md"}
_DEFAULT_CONFIGURATION = {
    "framework": "pytorch",
    "task": "auto-speech-recognition",
    "model": {"type": "funasr"},
    "pipeline": {"type": "funasr-pipeline"},
}


def write_funasr_model(
    output_dir: str | os.PathLike,
    base_dir: str | os.PathLike,
    model_dir: str | os.PathLike,
    adapter_dir: str | os.PathLike | None = None,
) -> dict[str, int]:
    """Write ``model.pt`` + ``funasr_config.yaml`` + ``configuration.json`` + the base's other files into
    `output_dir`: the model of `model_dir` (+ LoRA `adapter_dir`, merged) on the ORIGINAL folder `base_dir`.
    Staged in ``.tmp-funasr_model/`` and moved in, ``model.pt`` last (atomically replaced), so an interrupted
    write never leaves a truncated ``model.pt``. Returns `export_funasr`'s tensor counts."""
    out = Path(output_dir)
    staged = staging_path(out / "funasr_model")
    if staged.parent.exists():
        shutil.rmtree(staged.parent)
    staged.mkdir(parents=True)
    try:
        counts = export_funasr(model_dir, base_dir, staged, adapter_dir=adapter_dir)
        config_text = original_config_path(base_dir).read_text(encoding="utf-8")
        (staged / FUNASR_CONFIG_NAME).write_text(config_text, encoding="utf-8")
        _write_configuration(staged / "configuration.json", Path(base_dir) / "configuration.json")
        for item in sorted(staged.iterdir()):
            if item.name in _NOT_COPIED or item.name.startswith("."):
                continue
            _replace(item, out / item.name)
        os.replace(staged / "configuration.json", out / "configuration.json")
        os.replace(staged / "model.pt", out / "model.pt")
    finally:
        shutil.rmtree(staged.parent, ignore_errors=True)
    logger.info("FunASR model: %s (+ %s, configuration.json), tensors %s", out / "model.pt", FUNASR_CONFIG_NAME, counts)
    return counts


def _write_configuration(path: Path, base_configuration: Path) -> None:
    """The base's configuration.json (FunASR's training copies it too), pointing at our config and model.pt."""
    configuration: dict[str, Any] = dict(_DEFAULT_CONFIGURATION)
    if base_configuration.is_file():
        configuration = json.loads(base_configuration.read_text(encoding="utf-8"))
    metas = configuration.setdefault("file_path_metas", {})
    metas["init_param"] = "model.pt"
    metas["config"] = FUNASR_CONFIG_NAME
    path.write_text(json.dumps(configuration, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _replace(source: Path, target: Path) -> None:
    """Move `source` to `target`, replacing what a previous run left there."""
    if target.is_dir() and not target.is_symlink():
        remove_directory(target)
    elif target.exists() or target.is_symlink():
        target.unlink()
    os.replace(source, target)


def funasr_export_command(model_dir: str | os.PathLike, adapter_dir: str | os.PathLike | None, output: str) -> str:
    """The command that writes the FunASR folder later, given the ORIGINAL folder the model came from."""
    adapter = f" --adapter {adapter_dir}" if adapter_dir is not None else ""
    return (
        f"funasr-nano-hf export-funasr --model {model_dir}{adapter} --base <ORIGINAL FunASR folder> --output {output}"
    )
