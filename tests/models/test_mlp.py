"""The LLM's gated MLP keeps `gate` and `up` for backward, not also silu(gate) (`mlp_funasr_nano`): forward
bit-identical, gradients equal to autograd's own to rounding, less memory kept."""

from __future__ import annotations

import pytest
import torch
from helpers import assert_same_step_with_less_kept, loss_grads_and_saved_bytes, padded_training_batch

from funasr_nano_hf import load_pretrained
from funasr_nano_hf.models.mlp_funasr_nano import save_fewer_mlp_activations, silu_mul


def test_silu_mul_gradients_are_autograds():
    gate, up = torch.randn(3, 5, 7, dtype=torch.float64, requires_grad=True), torch.randn(3, 5, 7, dtype=torch.float64)
    up.requires_grad_()
    assert torch.autograd.gradcheck(silu_mul, (gate, up))
    assert torch.equal(silu_mul(gate, up), torch.nn.functional.silu(gate) * up)


@pytest.mark.parametrize("dtype,tolerance", [(torch.float32, 1e-6), (torch.bfloat16, 1e-2)])
def test_silu_mul_matches_silu_times_up(dtype, tolerance):
    gate = (4 * torch.randn(64, 96)).to(dtype).requires_grad_()
    up = torch.randn(64, 96).to(dtype).requires_grad_()
    grad = torch.randn(64, 96).to(dtype)
    ours = silu_mul(gate, up)
    ours_grads = torch.autograd.grad(ours, (gate, up), grad)
    reference = torch.nn.functional.silu(gate) * up
    reference_grads = torch.autograd.grad(reference, (gate, up), grad)
    assert torch.equal(ours, reference)
    for a, b in zip(ours_grads, reference_grads):
        assert a.dtype == dtype
        torch.testing.assert_close(a, b, rtol=tolerance, atol=tolerance)


def test_lean_mlp_keeps_less_and_changes_no_number(tiny_original_dir, shared_dir):
    model, processor = load_pretrained(tiny_original_dir)
    llm = model.model.language_model
    mlps = [m for m in llm.modules() if hasattr(m, "gate_proj")]
    assert mlps and all(type(m).saves_fewer_activations for m in mlps), "our LLM's MLPs are switched"
    assert save_fewer_mlp_activations(llm) == 0, "switching twice is a no-op"
    for name, param in model.named_parameters():
        param.requires_grad = ".self_attn." in name  # LoRA-like: the MLP frozen, gradients flow through it
    model.train()
    batch = padded_training_batch(processor, shared_dir)
    lean = loss_grads_and_saved_bytes(model, batch)
    for module in mlps:
        module.__class__ = type(module).__mro__[1]  # transformers' own class
    try:
        stock = loss_grads_and_saved_bytes(model, batch)
    finally:
        save_fewer_mlp_activations(llm)
    assert_same_step_with_less_kept(lean, stock, rtol=1e-5, atol=1e-6)
