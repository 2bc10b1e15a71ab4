"""Frozen-path caching: compute the frozen audio encoder + adaptor once, train the LLM side every epoch.

In the guide's LoRA recipe the audio encoder and adaptor are frozen. Frozen modules stay in eval mode
here (see `FunAsrNanoHfForConditionalGeneration.train`), so their output for an example never changes:
the LLM-visible audio embeddings (the first ceil(T_lfr/8) adaptor frames) are computed once with
`Dataset.map` and stored with the dataset (cached by datasets, keyed on the data and on the audio weights).
Training then skips the 70-layer encoder, which is most of a LoRA step's compute.
"""

from __future__ import annotations

import hashlib

import datasets
import torch
from torch import nn

from ..data.collator import FunAsrNanoCollator

AUDIO_PATH = {"audio_tower": "--freeze_audio_encoder", "multi_modal_projector": "--freeze_audio_adaptor"}


def trained_audio_modules(model: nn.Module) -> list[str]:
    """The audio-path modules (encoder ``audio_tower``, adaptor ``multi_modal_projector``) with a trainable
    parameter, a `PeftModel` (trained copies in ``modules_to_save``) or not."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return [name for name in AUDIO_PATH if any(p.requires_grad for p in getattr(base.model, name).parameters())]


def _audio_weights_fingerprint(base: nn.Module) -> str:
    digest = hashlib.sha256()
    for module in (base.model.audio_tower, base.model.multi_modal_projector):
        for name, tensor in sorted(module.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().to(torch.float32).cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def add_audio_embeddings(dataset: datasets.Dataset, model: nn.Module, batch_size: int = 8) -> datasets.Dataset:
    """Replace `input_features` by `audio_embeds` ([tokens, llm_hidden] float32 per example)."""
    trained = trained_audio_modules(model)
    if trained:
        raise ValueError(
            f"frozen-path caching needs a frozen audio path, but {' and '.join(trained)} trains "
            f"({', '.join(AUDIO_PATH[name] + ' false' for name in trained)}): its output cannot be computed once. "
            "Freeze it or drop --cache_frozen_audio"
        )
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    collate = FunAsrNanoCollator(pad_token_id=0)

    @torch.no_grad()
    def embed(batch: dict[str, list]) -> dict[str, list]:
        rows = [{"input_features": f, "input_ids": [], "labels": []} for f in batch["input_features"]]
        padded = collate(rows)
        was_training = base.training
        base.eval()
        out = base.model.get_audio_features(
            padded["input_features"].to(base.device), padded["input_features_mask"].to(base.device)
        )
        base.train(was_training)
        lengths = out.audio_token_lengths.tolist()
        adaptor = out.adaptor_hidden_states.float().cpu()
        return {"audio_embeds": [adaptor[i, :n].numpy() for i, n in enumerate(lengths)]}

    fingerprint = hashlib.sha256(f"{dataset._fingerprint}-{_audio_weights_fingerprint(base)}".encode()).hexdigest()[:16]
    return dataset.map(
        embed,
        batched=True,
        batch_size=batch_size,
        remove_columns=["input_features"],
        new_fingerprint=fingerprint,
        desc="caching frozen audio embeddings",
    )
