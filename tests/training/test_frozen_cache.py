"""Frozen-path caching gives the same loss as the uncached path on the same batch."""

from __future__ import annotations

import pytest
import torch

from funasr_nano_hf import load_pretrained
from funasr_nano_hf.data.collator import FunAsrNanoCollator
from funasr_nano_hf.data.featurize import DataConfig, build_dataset
from funasr_nano_hf.training.arguments import ModelArguments
from funasr_nano_hf.training.frozen_cache import add_audio_embeddings
from funasr_nano_hf.training.model_setup import prepare_model_for_finetuning


@pytest.fixture(scope="module")
def lora_model_and_data(tiny_original_dir, shared_dir, tmp_path_factory):
    model, processor = load_pretrained(tiny_original_dir)
    model = prepare_model_for_finetuning(model, ModelArguments(model_dir=str(tiny_original_dir), lora_dropout=0.0))
    config = DataConfig(cache_dir=str(tmp_path_factory.mktemp("cache")), precompute_features=True)
    dataset, _ = build_dataset([str(shared_dir / "data" / "tts" / "valid.jsonl")], processor, config)
    return model, processor, dataset.select(range(6))


def test_cached_and_uncached_loss_and_gradients_match(lora_model_and_data):
    model, processor, dataset = lora_model_and_data
    cached = add_audio_embeddings(dataset, model)
    assert "audio_embeds" in cached.column_names and "input_features" not in cached.column_names
    collate = FunAsrNanoCollator(pad_token_id=processor.tokenizer.pad_token_id)
    model.train()
    results = []
    for rows in (list(dataset), list(cached)):
        model.zero_grad()
        loss = model(**collate(rows)).loss
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        results.append((loss.item(), grads))
    (loss_a, grads_a), (loss_b, grads_b) = results
    assert loss_a == pytest.approx(loss_b, abs=1e-5)
    for name, grad in grads_a.items():
        torch.testing.assert_close(grad, grads_b[name], rtol=1e-4, atol=1e-6)


def test_refuses_a_trainable_audio_path(tiny_original_dir, lora_model_and_data):
    _, processor, dataset = lora_model_and_data
    model, _ = load_pretrained(tiny_original_dir)
    model = prepare_model_for_finetuning(
        model, ModelArguments(model_dir=str(tiny_original_dir), freeze_audio_adaptor=False)
    )
    with pytest.raises(
        ValueError, match=r"frozen audio path, but multi_modal_projector trains \(--freeze_audio_adaptor false\)"
    ):
        add_audio_embeddings(dataset, model)


def test_frozen_modules_stay_in_eval_mode(lora_model_and_data):
    model, _, _ = lora_model_and_data
    model.train()
    base = model.get_base_model()
    assert not base.model.audio_tower.training and not base.model.multi_modal_projector.training
    assert base.model.language_model.training


def test_sharded_cache_equals_the_whole_and_reads_the_other_shards_from_the_cache(lora_model_and_data):
    """Each rank embeds its own contiguous shard and reads the others' from the datasets cache: the result is the
    unsharded cache, and a rank that finds every shard cached runs the audio path not once."""
    from funasr_nano_hf.training.frozen_cache import add_audio_embeddings_sharded

    model, _, dataset = lora_model_and_data
    whole = add_audio_embeddings(dataset, model)
    runs = []
    hook = model.get_base_model().model.audio_tower.register_forward_hook(lambda *_: runs.append(1))
    waited = []
    try:
        for rank in (0, 1):  # the two ranks, one after the other; rank 1 finds both shards cached by rank 0
            runs.clear()
            sharded = add_audio_embeddings_sharded(
                dataset, model, rank=rank, world_size=2, wait_for_all=lambda r=rank: waited.append(r), batch_size=8
            )
            assert sharded["key"] == whole["key"]
            for a, b in zip(sharded["audio_embeds"], whole["audio_embeds"]):  # padded to other lengths: ~1e-7
                torch.testing.assert_close(torch.tensor(a), torch.tensor(b), rtol=1e-5, atol=1e-5)
            if rank == 1:
                assert runs == []
    finally:
        hook.remove()
    assert waited == [0, 1]


def test_released_audio_path_trains_the_same_on_cached_embeddings(tiny_original_dir, lora_model_and_data, tmp_path):
    """Freeing the frozen encoder + adaptor after caching: same loss and gradients on the cached data, a clear error
    (not a crash deep in torch) if audio features reach it, and the adapter still saves."""
    from funasr_nano_hf.training.frozen_cache import ReleasedAudioModule, release_frozen_audio_path

    reference, processor, dataset = lora_model_and_data
    cached = add_audio_embeddings(dataset, reference)
    model, _ = load_pretrained(tiny_original_dir)
    model = prepare_model_for_finetuning(model, ModelArguments(model_dir=str(tiny_original_dir), lora_dropout=0.0))
    model.load_state_dict(reference.state_dict())
    before = sum(p.numel() for p in model.parameters())
    freed = release_frozen_audio_path(model)
    assert freed > 0 and sum(p.numel() for p in model.parameters()) == before - freed
    assert isinstance(model.get_base_model().model.audio_tower, ReleasedAudioModule)
    collate = FunAsrNanoCollator(pad_token_id=processor.tokenizer.pad_token_id)
    results = []
    for candidate in (reference, model):
        candidate.train()
        candidate.zero_grad()
        loss = candidate(**collate(list(cached))).loss
        loss.backward()
        results.append((loss.item(), {n: p.grad for n, p in candidate.named_parameters() if p.requires_grad}))
    assert results[0][0] == pytest.approx(results[1][0], abs=1e-6)
    for name, grad in results[0][1].items():
        torch.testing.assert_close(results[1][1][name], grad, rtol=1e-5, atol=1e-7)
    with pytest.raises(RuntimeError, match="released after caching"):
        model(**collate(list(dataset)))
    model.save_pretrained(str(tmp_path / "adapter"))
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
