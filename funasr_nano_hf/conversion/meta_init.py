"""Building the model without its weights, then taking them from model.pt as they are: no second full copy.

`load_original` builds the model with its parameters on the meta device (accelerate's `init_empty_weights`,
buffers real: the non-persistent ones -- RoPE `inv_freq`, the encoder's positional table -- are computed by the
constructors exactly as before), converts model.pt's tensors one by one to the dtype the model would have given
them (`cast_like_model`; a tensor already in that dtype stays the memory-mapped tensor torch.load returned) and
assigns them (`load_state_dict(assign=True)`) instead of copying into freshly allocated parameters. Peak memory is
then one model (mostly file-backed, reclaimable pages) instead of the model plus model.pt.

Hand-written only where accelerate/torch stop: the per-tensor dtype match and the check that nothing is left on
meta (a tensor model.pt lacks would otherwise surface as a meta tensor deep in the first forward).
A model whose parameters are memory-mapped reads model.pt lazily: replace model.pt only after the process is done
with the model (or `.to()` another device/dtype first, which copies).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import torch
from accelerate import init_empty_weights

from ..errors import CheckpointError


@contextlib.contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Modules built inside get their parameters on the meta device (no memory), their buffers on the CPU."""
    with init_empty_weights(include_buffers=False):
        yield


def cast_like_model(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state` with each tensor in the dtype of the model's tensor of that name (what copying into it would give),
    contiguous; a tensor already so is returned as is (no copy). Unknown names pass through for the caller's check."""
    expected = model.state_dict(keep_vars=True)
    converted: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        target = expected.get(key)
        dtype = target.dtype if target is not None else value.dtype
        converted[key] = value.to(dtype).contiguous()
    return converted


def require_materialized(model: torch.nn.Module, source: Path) -> None:
    """Refuse a model with a parameter or buffer still on the meta device (naming `source`)."""
    left = [name for name, tensor in (*model.named_parameters(), *model.named_buffers()) if tensor.is_meta]
    if left:
        raise CheckpointError(f"{source}: {len(left)} tensors were not filled, e.g. {left[:5]}")
