"""The LLM's SDPA attention on CPU groups key/value heads inside the kernel instead of copying them.

Qwen3-0.6B has 16 query heads and 8 key/value heads. transformers' "sdpa" attention passes the grouping to
SDPA (`enable_gqa`) only without a mask (or on XPU/MPS); with one -- every padded training batch has one -- it
copies each key/value head (`repeat_kv`) first, and autograd keeps the copies until backward: per layer
twice the K/V the step needs, and a copy kernel. torch's CPU flash kernel groups the heads itself, mask or
not, with the same arithmetic per head (bit-identical outputs, tests/models/test_attention.py).

Hand-written because transformers has no per-model switch: only the process-wide `TRANSFORMERS_SDPA_FORCE_GQA`,
which would also send masked CUDA attention to SDPA's slow math kernel. So "sdpa" is wrapped once, and the
grouping is used only for modules marked by `group_kv_heads_in_kernel` (our LLM's layers), on CPU, with a mask,
for more than one query position; everything else goes to the function that was registered before.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

_MARK = "_funasr_nano_groups_kv_heads_in_kernel"
_PREVIOUS = ALL_ATTENTION_FUNCTIONS["sdpa"]
_STOCK_SDPA = getattr(_PREVIOUS, "wrapped", _PREVIOUS)  # a re-import must not wrap the wrapper


def group_kv_heads_in_kernel(language_model: nn.Module) -> None:
    """Mark the attention modules of `language_model` (a transformers decoder) for in-kernel K/V grouping."""
    for module in language_model.modules():
        if getattr(module, "num_key_value_groups", 1) > 1:
            setattr(module, _MARK, True)


def sdpa_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers' SDPA attention (same signature and output layout), grouping K/V heads in the kernel for
    marked modules on CPU when a mask is given (the case where transformers copies them)."""
    grouped = (
        getattr(module, _MARK, False)
        and query.device.type == "cpu"
        and attention_mask is not None
        and query.shape[2] > 1  # one position (decoding): transformers already folds the groups (`pack_gqa`)
        and not any(kwargs.get(name) is not None for name in ("cache", "position_bias", "softcap"))
        and not kwargs.get("output_attentions", False)
    )
    if not grouped:
        return _STOCK_SDPA(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs
        )
    output = torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=attention_mask, dropout_p=dropout, scale=scaling, enable_gqa=True
    )
    return output.transpose(1, 2).contiguous(), None


sdpa_attention_forward.wrapped = _STOCK_SDPA
AttentionInterface.register("sdpa", sdpa_attention_forward)
