"""Our model classes keep transformers' model contract -- the behaviours its common tests (`ModelTesterMixin`,
`GenerationTesterMixin`, not shipped in the installed package) check, written directly on the tiny model:
``return_dict=False`` tuples, the parent's forward signature, save/load, batching with padded clips of different
lengths, generate with and without the cache, ``inputs_embeds``, gradient checkpointing."""

from __future__ import annotations

import inspect
import typing

import pytest
import torch
from helpers import tts_subset
from transformers.models.fun_asr_nano.modeling_fun_asr_nano import FunAsrNanoModel
from transformers.utils import TransformersKwargs

from funasr_nano_hf import FunAsrNanoHfForConditionalGeneration, FunAsrNanoHfModel, load_pretrained, save_hf_folder
from funasr_nano_hf.data.collator import FunAsrNanoCollator
from funasr_nano_hf.data.featurize import DataConfig, build_dataset

ATOL = 1e-5
# Batched vs alone: fp32 kernels on different shapes sum in different orders (observed up to 1.2e-5 on logits of
# order 1); a padding leak would show as 1e-2 and more.
BATCH_ATOL = 1e-4


@pytest.fixture(scope="module")
def setup(tiny_original_dir, shared_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("conformance")
    data = tts_subset(shared_dir, root / "data", train=1, valid=3)
    model, processor = load_pretrained(tiny_original_dir)
    rows, _ = build_dataset([str(data / "valid.jsonl")], processor, DataConfig(cache_dir=str(root / "cache")))
    rows = [rows[i] for i in range(3)]
    assert len({row["num_frames"] for row in rows}) == 3  # clips of three lengths: the batch pads
    pad = processor.tokenizer.pad_token_id
    return model.eval(), processor, rows, FunAsrNanoCollator(pad), FunAsrNanoCollator(pad, for_generation=True), root


def test_get_audio_features_honours_return_dict_false(setup):
    model, _, rows, collate, _, _ = setup
    batch = collate(rows)
    with torch.no_grad():
        as_dict = model.model.get_audio_features(batch["input_features"], batch["input_features_mask"])
        as_tuple = model.model.get_audio_features(
            batch["input_features"], batch["input_features_mask"], return_dict=False
        )
    assert isinstance(as_tuple, tuple) and len(as_tuple) == len(as_dict.to_tuple())
    for ours, theirs in zip(as_tuple, as_dict.to_tuple()):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


def test_forward_keeps_the_parent_signature_with_our_additions():
    ours = inspect.signature(FunAsrNanoHfModel.forward).parameters
    parent = inspect.signature(FunAsrNanoModel.forward).parameters
    named = [name for name, p in parent.items() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    assert [name for name in ours if name in parent] == list(parent)  # every parent argument, same order
    assert list(ours)[: len(named)] == named and {"audio_embeds", "audio_embeds_mask"} <= set(ours)
    kwargs = ours["kwargs"]
    assert kwargs.kind is inspect.Parameter.VAR_KEYWORD
    hints = typing.get_type_hints(FunAsrNanoHfModel.forward, include_extras=True)
    assert typing.get_args(hints["kwargs"]) == (TransformersKwargs,)  # Unpack[TransformersKwargs]


def test_forward_return_dict_false_is_a_tuple(setup):
    model, _, rows, collate, _, _ = setup
    batch = {k: v for k, v in collate(rows[:1]).items() if k != "labels"}
    with torch.no_grad():
        as_tuple = model.model(**batch, return_dict=False)
        as_dict = model.model(**batch)
    assert isinstance(as_tuple, tuple)
    torch.testing.assert_close(as_tuple[0], as_dict.last_hidden_state, rtol=0, atol=0)


def test_save_and_load_round_trip(setup):
    model, processor, rows, collate, _, root = setup
    folder = save_hf_folder(model, processor, root / "saved")
    loaded = FunAsrNanoHfForConditionalGeneration.from_pretrained(str(folder)).eval()
    assert type(loaded) is FunAsrNanoHfForConditionalGeneration
    batch = collate(rows)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, model(**batch).logits, rtol=0, atol=0)
    assert set(loaded.state_dict()) == set(model.state_dict())


def test_batching_equivalence_with_padded_clips(setup):
    """Each clip alone and in a right-padded batch of three: the same logits at its real positions."""
    model, _, rows, collate, _, _ = setup
    batch = collate(rows)
    with torch.no_grad():
        together = model(**batch)
        for i, row in enumerate(rows):
            alone = model(**collate([row]))
            n = alone.logits.shape[1]
            torch.testing.assert_close(together.logits[i, :n], alone.logits[0], rtol=0, atol=BATCH_ATOL)
            assert not together.logits[i, n:].isnan().any()


def test_generate_with_and_without_cache(setup):
    model, _, rows, _, collate_prompts, _ = setup
    batch = collate_prompts(rows)  # left-padded prompts
    kwargs = dict(max_new_tokens=6, do_sample=False, min_new_tokens=6)
    with torch.no_grad():
        cached = model.generate(**batch, use_cache=True, **kwargs)
        uncached = model.generate(**batch, use_cache=False, **kwargs)
        one = model.generate(**collate_prompts(rows[:1]), use_cache=True, **kwargs)
    assert torch.equal(cached, uncached)
    prompt = batch["input_ids"].shape[1]
    assert torch.equal(cached[0, prompt:], one[0, one.shape[1] - 6 :])  # batched = alone (left padding)


def test_inputs_embeds_equal_input_ids(setup):
    """Text only: ``inputs_embeds`` = the embedded ``input_ids``. With audio: the embedded ids plus precomputed
    adaptor frames (`audio_embeds`) = ``input_ids`` + ``input_features``."""
    model, _, rows, collate, _, _ = setup
    batch = collate(rows)
    embed = model.get_input_embeddings()
    with torch.no_grad():
        text = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        text_embeds = model(inputs_embeds=embed(batch["input_ids"]), attention_mask=batch["attention_mask"]).logits
        torch.testing.assert_close(text_embeds, text, rtol=0, atol=0)
        audio = model.model.get_audio_features(batch["input_features"], batch["input_features_mask"])
        lengths = audio.audio_token_lengths
        frames = audio.adaptor_hidden_states[:, : int(lengths.max())]
        mask = torch.arange(frames.shape[1])[None] < lengths[:, None]
        with_audio = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        from_embeds = model(
            inputs_embeds=embed(batch["input_ids"]),
            audio_embeds=frames,
            audio_embeds_mask=mask,
            attention_mask=batch["attention_mask"],
        ).logits
    torch.testing.assert_close(from_embeds, with_audio, rtol=0, atol=ATOL)


def test_gradient_checkpointing_gives_the_same_loss_and_gradients(tiny_original_dir, setup):
    _, _, rows, collate, _, _ = setup
    batch = collate(rows)

    def loss_and_grads(checkpointing: bool):
        model, _ = load_pretrained(tiny_original_dir)
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            assert model.is_gradient_checkpointing
        model.train()
        torch.manual_seed(0)  # the same dropout masks; non-reentrant checkpointing replays them
        loss = model(**batch).loss
        loss.backward()
        return loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}

    loss, grads = loss_and_grads(False)
    loss_ckpt, grads_ckpt = loss_and_grads(True)
    torch.testing.assert_close(loss_ckpt, loss, rtol=0, atol=ATOL)
    assert grads and set(grads_ckpt) == set(grads)
    for name in grads:
        torch.testing.assert_close(grads_ckpt[name], grads[name], rtol=1e-4, atol=ATOL, msg=name)
