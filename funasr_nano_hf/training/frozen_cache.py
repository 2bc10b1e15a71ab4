"""Frozen-path caching: compute the frozen audio encoder + adaptor once, train the LLM side every epoch.

In the guide's LoRA recipe the audio encoder and adaptor are frozen. Frozen modules stay in eval mode
here (see `FunAsrNanoHfForConditionalGeneration.train`), so their output for an example never changes:
the LLM-visible audio embeddings (the first ceil(T_lfr/8) adaptor frames) are computed once with
`Dataset.map` and stored with the dataset (cached by datasets, keyed on the data and on the audio weights).
Training then skips the 70-layer encoder, which is most of a LoRA step's compute.

The audio path computes in fp32 with autocast off whether cached or not (`FunAsrNanoHfModel.get_audio_features`), so
cached and uncached features are the same under ``--bf16``/``--fp16``. With several processes each rank caches its
own contiguous shard (`add_audio_embeddings_sharded`), on the training device, and then reads the others' from the
datasets cache: nobody sits in a collective while one process embeds the whole set.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import datasets
import torch
from torch import nn

from ..data.collator import FunAsrNanoCollator

AUDIO_PATH = {"audio_tower": "--freeze_audio_encoder", "multi_modal_projector": "--freeze_audio_adaptor"}


def trained_audio_modules(model: nn.Module) -> list[str]:
    """The audio-path modules (encoder ``audio_tower``, adaptor ``multi_modal_projector``) with a trainable
    parameter, a `PeftModel` (trained copies in ``modules_to_save``) or not."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.model.trained_audio_modules()


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


def add_audio_embeddings_sharded(
    dataset: datasets.Dataset,
    model: nn.Module,
    *,
    rank: int,
    world_size: int,
    wait_for_all: Callable[[], None],
    batch_size: int = 8,
) -> datasets.Dataset:
    """`add_audio_embeddings` with the work split over `world_size` processes: this rank embeds its contiguous shard
    (written to the datasets cache), `wait_for_all()` waits for every rank to finish its own, then the other shards
    are read from the cache (computed here if a process cannot see the others' cache files, e.g. multi-node without
    a shared filesystem) and all are concatenated in dataset order. Every rank returns the same dataset."""
    if world_size <= 1 or len(dataset) < world_size:
        return add_audio_embeddings(dataset, model, batch_size)
    shards = [dataset.shard(num_shards=world_size, index=i, contiguous=True) for i in range(world_size)]
    own = add_audio_embeddings(shards[rank], model, batch_size)
    wait_for_all()
    parts = [own if i == rank else add_audio_embeddings(shard, model, batch_size) for i, shard in enumerate(shards)]
    return datasets.concatenate_datasets(parts)


class ReleasedAudioModule(nn.Module):
    """Stands where a frozen audio module was once its outputs are cached: no weights, and a clear error instead
    of a forward pass (the training process then holds only the LLM side)."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        # empty, frozen: code that asks the module for its dtype/device (get_audio_features) still gets an answer
        self.placeholder = nn.Parameter(torch.empty(0), requires_grad=False)

    def forward(self, *args: object, **kwargs: object) -> None:
        raise RuntimeError(
            f"the frozen {self.name} was released after caching its outputs (release_frozen_audio_path): feed "
            "audio_embeds (add_audio_embeddings), or reload the model from its folder to run the audio path"
        )


def release_frozen_audio_path(model: nn.Module) -> int:
    """Replace the frozen audio encoder and adaptor of `model` (a `PeftModel` or the bare model) by
    `ReleasedAudioModule` stubs and return the number of parameters freed. Only for a process that needs the
    audio path no more: training on `add_audio_embeddings` output, without evaluation or generation from audio,
    saving an adapter (merges and FunASR exports rebuild the model from its folder). A trained audio module is
    refused (its weights are part of what the run saves)."""
    trained = trained_audio_modules(model)
    if trained:
        raise ValueError(f"cannot release a trained audio module: {', '.join(trained)}")
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    freed = 0
    for name in AUDIO_PATH:
        module = getattr(base.model, name)
        freed += sum(p.numel() for p in module.parameters())
        stub = ReleasedAudioModule(name)
        setattr(base.model, name, stub.to(next(module.parameters()).device))
    return freed
