"""The LLM's SDPA attention on CPU groups key/value heads in the kernel (`attention_funasr_nano`): same numbers as
transformers' copy-the-heads path, without the copies."""

from __future__ import annotations

import torch
from helpers import assert_same_step_with_less_kept, loss_grads_and_saved_bytes, padded_training_batch

from funasr_nano_hf import load_pretrained
from funasr_nano_hf.models import attention_funasr_nano

_MARK = attention_funasr_nano._MARK


def test_grouped_heads_give_the_same_loss_and_gradients_with_less_saved(tiny_original_dir, shared_dir):
    model, processor = load_pretrained(tiny_original_dir)
    attention = [m for m in model.model.language_model.modules() if hasattr(m, "num_key_value_groups")]
    assert attention and all(getattr(m, _MARK, False) for m in attention), "our LLM's layers are marked"
    assert attention[0].num_key_value_groups > 1, "the tiny LLM has grouped K/V heads, as Qwen3-0.6B"
    for name, param in model.named_parameters():
        param.requires_grad = ".self_attn." in name  # gradients flow through the attention (as LoRA's)
    model.train()
    batch = padded_training_batch(processor, shared_dir)
    grouped = loss_grads_and_saved_bytes(model, batch)
    for module in attention:
        setattr(module, _MARK, False)  # transformers' path: repeat_kv copies
    try:
        copied = loss_grads_and_saved_bytes(model, batch)
    finally:
        for module in attention:
            setattr(module, _MARK, True)
    assert_same_step_with_less_kept(grouped, copied, rtol=1e-6, atol=1e-7)


def test_unmarked_modules_and_other_devices_use_the_registered_sdpa():
    from transformers.integrations.sdpa_attention import sdpa_attention_forward as stock
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    assert ALL_ATTENTION_FUNCTIONS["sdpa"] is attention_funasr_nano.sdpa_attention_forward
    assert attention_funasr_nano.sdpa_attention_forward.wrapped is stock
    module = torch.nn.Module()
    module.num_key_value_groups, module.is_causal = 2, True
    q, k, v = torch.randn(2, 4, 5, 8), torch.randn(2, 2, 5, 8), torch.randn(2, 2, 5, 8)
    mask = torch.ones(2, 1, 5, 5, dtype=torch.bool).tril()
    expected, _ = stock(module, q, k, v, mask)
    assert torch.equal(attention_funasr_nano.sdpa_attention_forward(module, q, k, v, mask)[0], expected)
    setattr(module, _MARK, True)
    assert torch.equal(attention_funasr_nano.sdpa_attention_forward(module, q, k, v, mask)[0], expected)
