"""Export: the inverse of `loading.load_original` (HF -> original), so a fine-tuned model runs in FunASR's own
tools (its AutoModel, its vLLM and llama.cpp runtimes read model.pt).

The ORIGINAL folder the model was converted from (`base`) is the template: LoRA is merged (peft
`merge_and_unload`), names are mapped back by the same rule table as loading (`hf_to_original`), every tensor
takes the base checkpoint's dtype, tensors the fine-tune did not change are copied from the base file bit for
bit, and so are the tensors the HF model has no place for (FunASR's CTC branch). The base's other files
(config.yaml, Qwen3-0.6B/, ...) are copied as they are.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import torch

from ..errors import CheckpointError
from ..models.modeling_funasr_nano import FunAsrNanoHfForConditionalGeneration
from .loading import (
    check_adapter,
    detect_layout,
    load_pretrained,
    original_config_path,
    read_config_yaml,
    read_model_pt,
)
from .original_layout import hf_to_original, layout_from_config

logger = logging.getLogger(__name__)


def export_funasr(
    model_dir: str | Path, base_dir: str | Path, output: str | Path, adapter_dir: str | Path | None = None
) -> dict[str, int]:
    """Write the model of `model_dir` (+ LoRA `adapter_dir`) as an ORIGINAL FunASR folder `output`, built on
    the original folder `base_dir`. Returns how many tensors of model.pt are "changed", "unchanged" (bit-identical
    to the base) and "extra" (no place in the HF model: copied from the base)."""
    base = Path(base_dir)
    if detect_layout(base) != "original":
        raise CheckpointError(f"{base}: --base must be the ORIGINAL FunASR folder (config.yaml + model.pt)")
    model = _merged_model(model_dir, adapter_dir)
    yaml_conf = read_config_yaml(original_config_path(base))
    base_state = read_model_pt(base / "model.pt")
    ours = hf_to_original(model.state_dict(), layout_from_config(yaml_conf))
    if model.config.tie_word_embeddings:  # one tensor in the HF model; FunASR stores it under both names
        ours["llm.lm_head.weight"] = ours["llm.model.embed_tokens.weight"]
    state, counts = _onto_base(ours, base_state, base / "model.pt")
    _write_original_folder(base, Path(output), state)
    logger.info("exported %s: %s", output, counts)
    return counts


def _merged_model(model_dir: str | Path, adapter_dir: str | Path | None) -> FunAsrNanoHfForConditionalGeneration:
    """The model in fp32, with the LoRA adapter (if any) merged into its weights."""
    model, _ = load_pretrained(model_dir, dtype=torch.float32)
    if adapter_dir is None:
        return model
    from peft import PeftModel

    check_adapter(adapter_dir)
    return PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()


def _onto_base(
    ours: dict[str, torch.Tensor], base_state: dict[str, torch.Tensor], base_file: Path
) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """The state dict to write, in the base's key order and dtypes: our tensor where it differs from the
    base's, the base's own tensor where it is equal or where the HF model has none."""
    state: dict[str, torch.Tensor] = {}
    counts = {"changed": 0, "unchanged": 0, "extra": 0}
    for key, original in base_state.items():
        if key not in ours:  # no place in the HF model (CTC branch): the base's tensor, untouched
            state[key] = original.clone()
            counts["extra"] += 1
            continue
        tensor = ours[key].detach().to(original.dtype).contiguous()
        if tensor.shape != original.shape:
            raise CheckpointError(f"{key}: exported shape {tuple(tensor.shape)} != base {tuple(original.shape)}")
        if torch.equal(tensor, original):
            state[key] = original.clone()
            counts["unchanged"] += 1
        else:
            state[key] = tensor
            counts["changed"] += 1
    missing = sorted(set(ours) - set(base_state))
    if missing:
        raise CheckpointError(f"{base_file}: the base lacks {len(missing)} tensors of the model, e.g. {missing[:3]}")
    return state, counts


def _write_original_folder(base: Path, out: Path, state: dict[str, torch.Tensor]) -> None:
    """`out` = the base folder's files with `state` as model.pt (`{"state_dict": ...}`, the form `read_model_pt`
    reads), written to a temporary name first so an interrupted export leaves no truncated model.pt."""
    out.mkdir(parents=True, exist_ok=True)
    for item in base.iterdir():
        if item.name == "model.pt":
            continue
        target = out / item.name
        if item.is_dir():
            shutil.copytree(item, target, dirs_exist_ok=True)
        else:
            shutil.copy2(item, target)
    tmp = out / "model.pt.tmp"
    torch.save({"state_dict": state}, tmp)
    tmp.replace(out / "model.pt")
