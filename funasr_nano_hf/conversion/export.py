"""Export back to FunASR's ORIGINAL layout, so a fine-tuned model runs in FunASR's own tools
(its AutoModel, its vLLM and llama.cpp runtimes read model.pt).

LoRA is merged (peft `merge_and_unload`), names are mapped back by the same rule table as loading, every
tensor takes the base checkpoint's dtype, and tensors the fine-tune did not change — the CTC branch
included — are copied from the base file bit for bit.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import torch

from ..errors import CheckpointError
from .loading import _read_yaml, detect_layout, load_pretrained, read_model_pt
from .original_layout import encoder_layout, hf_to_original

logger = logging.getLogger(__name__)


def export_funasr(
    model_dir: str | Path, base_dir: str | Path, output: str | Path, adapter_dir: str | Path | None = None
) -> dict[str, int]:
    """Write `output` in the original layout; returns counts of changed / copied tensors."""
    base = Path(base_dir)
    if detect_layout(base) != "original":
        raise CheckpointError(f"{base}: --base must be the ORIGINAL FunASR folder (config.yaml + model.pt)")
    model, _ = load_pretrained(model_dir, dtype=torch.float32)
    if adapter_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    yaml_conf = _read_yaml(base / "config.yaml")
    base_state = read_model_pt(base / "model.pt")
    ours = hf_to_original(
        {k: v for k, v in model.state_dict().items() if not (k == "lm_head.weight" and model.config.tie_word_embeddings)},
        encoder_layout(yaml_conf),
    )
    if model.config.tie_word_embeddings:
        ours["llm.lm_head.weight"] = ours["llm.model.embed_tokens.weight"]
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
        raise CheckpointError(f"{base / 'model.pt'}: the base lacks {len(missing)} tensors of the model, e.g. {missing[:3]}")
    out = Path(output)
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
    logger.info("exported %s: %s", out, counts)
    return counts
