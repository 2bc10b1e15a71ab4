"""Training steps compute `lm_head` and the loss only at labelled positions; decoding's prefill only at the last
position. Both must leave the numbers unchanged: the loss and every gradient equal the full-logits ones, and
`generate` returns the same tokens as with full prefill logits."""

from __future__ import annotations

import glob

import pytest
import soundfile as sf
import torch
from helpers import padded_training_batch

from funasr_nano_hf import load_pretrained
from funasr_nano_hf.inference import generate_ids


@pytest.fixture(scope="module")
def model_and_batch(tiny_original_dir, shared_dir):
    model, processor = load_pretrained(tiny_original_dir)
    batch = padded_training_batch(processor, shared_dir)
    # LoRA-like: the audio path frozen, the LLM trained (lm_head is tied to the embeddings).
    for name, param in model.named_parameters():
        param.requires_grad = not name.startswith(("model.audio_tower", "model.multi_modal_projector"))
    return model, processor, batch


def _loss_and_grads(model, batch, labelled_only: bool):
    model.labelled_logits_only = labelled_only
    model.train()
    model.zero_grad(set_to_none=True)
    torch.manual_seed(0)  # the same dropout masks in both runs
    out = model(**batch)
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}
    return out, grads


def test_labelled_positions_loss_and_gradients_equal_full_logits(model_and_batch):
    model, _, batch = model_and_batch
    labels = batch["labels"]
    assert (labels == -100).any(dim=1).all() and len(set((labels != -100).sum(1).tolist())) > 1, "mixed lengths"
    full, full_grads = _loss_and_grads(model, batch, labelled_only=False)
    kept, kept_grads = _loss_and_grads(model, batch, labelled_only=True)
    model.labelled_logits_only = True
    model.eval()
    shifted = torch.nn.functional.pad(labels, (0, 1), value=-100)[:, 1:]
    keep = shifted != -100
    vocab = model.config.text_config.vocab_size
    assert full.logits.shape == (*labels.shape, vocab)
    assert kept.logits.shape == (int(keep.sum()), vocab)
    torch.testing.assert_close(kept.logits, full.logits[keep], rtol=0, atol=1e-5)
    assert abs(kept.loss.item() - full.loss.item()) <= 1e-6
    assert full_grads.keys() == kept_grads.keys() and len(full_grads) > 10
    for name, grad in full_grads.items():
        torch.testing.assert_close(kept_grads[name], grad, rtol=1e-5, atol=1e-7, msg=name)


def test_misaligned_labels_are_refused_with_a_clear_error(model_and_batch):
    model, _, batch = model_and_batch
    model.train()
    try:
        with pytest.raises(ValueError, match=r"labels has shape .* labels must be \[batch, sequence\] aligned"):
            model(**{**batch, "labels": batch["labels"][:, :-1]})
    finally:
        model.eval()


def test_eval_mode_keeps_full_logits(model_and_batch):
    """Evaluation (eval_acc, compute_metrics) gets [batch, sequence, vocab] logits as transformers gives them."""
    model, _, batch = model_and_batch
    model.eval()
    with torch.no_grad():
        out = model(**batch)
    assert out.logits.shape[:2] == batch["labels"].shape


def test_prefill_logits_last_position_only_and_tokens_unchanged(model_and_batch, shared_dir):
    model, processor, _ = model_and_batch
    model.eval()
    wavs = [sf.read(p, dtype="float32")[0] for p in sorted(glob.glob(str(shared_dir / "data/tts/wav/valid/*.wav")))[:3]]
    shapes: list[tuple[int, ...]] = []
    hook = model.lm_head.register_forward_hook(lambda module, args, output: shapes.append(tuple(output.shape)))
    try:
        fast = generate_ids(model, processor, wavs, max_new_tokens=8)
        prefill_fast = shapes[0]
        shapes.clear()
        full = generate_ids(model, processor, wavs, max_new_tokens=8, logits_to_keep=0)
        prefill_full = shapes[0]
    finally:
        hook.remove()
    vocab = model.config.text_config.vocab_size
    assert prefill_fast == (3, 1, vocab)
    assert prefill_full[0] == 3 and prefill_full[1] > 1  # the reference run really computed every position
    assert torch.equal(fast, full)


def test_frozen_audio_path_runs_without_autograd_and_a_trained_adaptor_gets_gradients(model_and_batch):
    """A frozen audio path builds no autograd graph inside a training step (its frames reach the LLM as leaves);
    once the adaptor is trained, its parameters get gradients again; the loss is the same both ways."""
    model, _, batch = model_and_batch
    model.train()
    features = (batch["input_features"], batch["input_features_mask"])
    grad_mode = []
    hook = model.model.audio_tower.register_forward_hook(lambda *_: grad_mode.append(torch.is_grad_enabled()))
    try:
        frozen = model.model.get_audio_features(*features)
        frozen_loss = model(**batch).loss
    finally:
        hook.remove()
    assert grad_mode == [False, False] and torch.is_grad_enabled()
    assert frozen.pooler_output.grad_fn is None
    adaptor = list(model.model.multi_modal_projector.parameters())
    try:
        for param in adaptor:
            param.requires_grad = True
        trained = model.model.get_audio_features(*features)
        assert trained.pooler_output.grad_fn is not None
        model.zero_grad(set_to_none=True)
        loss = model(**batch).loss
        loss.backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in adaptor if p.dim() > 1)
        torch.testing.assert_close(loss, frozen_loss, rtol=0, atol=0)
        assert not any(p.grad is not None for p in model.model.audio_tower.parameters())
    finally:
        for param in adaptor:
            param.requires_grad = False
        model.zero_grad(set_to_none=True)
