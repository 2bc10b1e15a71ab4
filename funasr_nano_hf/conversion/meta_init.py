"""Building the model without its weights, then taking them from model.pt as they are: no second full copy.

`load_original` builds the model with its parameters on the meta device (accelerate's `init_empty_weights`,
buffers real: the non-persistent ones -- RoPE `inv_freq`, the encoder's positional table -- are computed by the
constructors exactly as before), converts model.pt's tensors one by one to the dtype the model would have given
them (`cast_like_model`; a tensor already in that dtype stays the memory-mapped tensor torch.load returned) and
assigns them (`load_state_dict(assign=True)`) instead of copying into freshly allocated parameters. Peak memory is
then one model (mostly file-backed, reclaimable pages) instead of the model plus model.pt.

The pages of model.pt a converted tensor was read from (bf16 LLM weights into an fp32 model, the tied `lm_head`)
stay resident -- and counted in the process's RSS -- as long as the file stays mapped, which is as long as any
tensor taken as is lives. `FilePages` hands them back to the kernel (`madvise(MADV_DONTNEED)` on the
page-aligned ranges of tensors the model does not use, only inside the mapping of model.pt itself, read
from /proc/self/maps; a private file mapping that was never written just re-reads the file if touched again).

Hand-written only where accelerate/torch stop: the per-tensor dtype match and the check that nothing is left on
meta (a tensor model.pt lacks would otherwise surface as a meta tensor deep in the first forward).
A model whose parameters are memory-mapped reads model.pt lazily: replace model.pt only after the process is done
with the model (or `.to()` another device/dtype first, which copies).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import mmap
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
from accelerate import init_empty_weights

from ..errors import CheckpointError

logger = logging.getLogger(__name__)
_MADV_DONTNEED = 4  # linux/mman.h


@contextlib.contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Modules built inside get their parameters on the meta device (no memory), their buffers on the CPU."""
    with init_empty_weights(include_buffers=False):
        yield


def cast_like_model(
    model: torch.nn.Module, state: dict[str, torch.Tensor], pages: FilePages | None = None
) -> dict[str, torch.Tensor]:
    """`state` with each tensor in the dtype of the model's tensor of that name (what copying into it would give),
    contiguous; a tensor already so is returned as is (no copy). Unknown names pass through for the caller's check.
    With `pages`, the file pages of each converted original are released as soon as its copy exists, so the peak
    holds one original tensor at a time, not all of model.pt."""
    expected = model.state_dict(keep_vars=True)
    converted: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        target = expected.get(key)
        dtype = target.dtype if target is not None else value.dtype
        converted[key] = value.to(dtype).contiguous()
        if pages is not None and converted[key].untyped_storage().data_ptr() != value.untyped_storage().data_ptr():
            pages.release(value)
    return converted


def require_materialized(model: torch.nn.Module, source: Path) -> None:
    """Refuse a model with a parameter or buffer still on the meta device (naming `source`)."""
    left = [name for name, tensor in (*model.named_parameters(), *model.named_buffers()) if tensor.is_meta]
    if left:
        raise CheckpointError(f"{source}: {len(left)} tensors were not filled, e.g. {left[:5]}")


def _file_mappings(path: Path) -> list[tuple[int, int]]:
    """The address ranges of this process mapping `path` (Linux /proc/self/maps; empty elsewhere)."""
    target = os.path.realpath(path)
    ranges = []
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            for line in maps:
                fields = line.split(maxsplit=5)
                if len(fields) == 6 and fields[5].strip() == target:
                    start, end = (int(x, 16) for x in fields[0].split("-"))
                    ranges.append((start, end))
    except OSError:
        return []
    return ranges


class FilePages:
    """The mapping of a memory-mapped weight file in this process, to hand back the resident pages of tensors read
    from it that are no longer needed (see the module docstring). Off Linux, or for a file loaded into memory
    rather than mapped, it releases nothing."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.mappings = _file_mappings(self.path)
        self.released = 0
        self._libc = ctypes.CDLL(None, use_errno=True) if self.mappings else None

    def release(self, tensor: torch.Tensor) -> None:
        """Drop the pages of `tensor`'s storage if it lies inside the mapping (whole pages only: a page shared
        with a neighbouring tensor stays). Always safe: an untouched private file page is re-read if used again."""
        if self._libc is None or tensor.device.type != "cpu":
            return
        storage = tensor.untyped_storage()
        start = storage.data_ptr()
        end = start + storage.nbytes()
        if not any(low <= start and end <= high for low, high in self.mappings):
            return  # memory torch owns (freed when the tensor is), not the file's
        page = mmap.PAGESIZE
        first, last = -(-start // page) * page, end // page * page
        if last <= first:
            return
        if self._libc.madvise(ctypes.c_void_p(first), ctypes.c_size_t(last - first), _MADV_DONTNEED) == 0:
            self.released += last - first

    def release_unused(self, tensors: Iterable[torch.Tensor], keep: torch.nn.Module) -> int:
        """`release` every tensor whose storage no parameter or buffer of `keep` uses; the bytes released so far."""
        used = {t.untyped_storage().data_ptr() for t in (*keep.parameters(), *keep.buffers())}
        for tensor in tensors:
            if tensor.untyped_storage().data_ptr() not in used:
                self.release(tensor)
        logger.debug("%s: %.1f MB of pages released", self.path, self.released / 2**20)
        return self.released
