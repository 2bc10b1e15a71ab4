"""Batch samplers for speech fine-tuning: FunASR's three ``batch_type`` s, deterministic, sharded, resumable.

Each sampler is a ``torch.utils.data.Sampler[list[int]]`` that yields one list of dataset indices per batch, for
``DataLoader(dataset, batch_sampler=...)``. Its only per-example input is ``lengths`` (the cost of each example,
e.g. fbank frames + label tokens), so the dataset is never touched. `build_batch_sampler(batch_type, ...)` picks
the class: ``"example"`` (`ExampleBatchSampler`, fixed count), ``"length"`` (`LengthBatchSampler`, fixed count of
similar-length examples) or ``"token"`` (`TokenBatchSampler`, a padded-size budget). What all three share --
epochs as a pure function of ``(seed, epoch)``, sharding over ranks, ``state_dict`` resumption -- is
`BatchSamplerBase`; each class docstring states its constraint and algorithm.

Example::

    >>> from funasr_nano_hf.data.samplers import build_batch_sampler
    >>> lengths = [120, 900, 450, 300, 610, 75]            # e.g. fbank frames + label tokens per example
    >>> sampler = build_batch_sampler("token", lengths, max_tokens=1200, seed=0)
    >>> all(max(lengths[i] for i in b) * len(b) <= 1200 for b in sampler)
    True
    >>> sorted(i for b in sampler for i in b)
    [0, 1, 2, 3, 4, 5]

Hand-written (after lhotse's resumable samplers): torch's and accelerate's samplers have no length or
padded-size batching, and transformers' ``group_by_length`` has no token budget.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Sampler

logger = logging.getLogger(__name__)

OversizePolicy = Literal["single", "skip"]

__all__ = [
    "BATCH_SAMPLERS",
    "BatchSamplerBase",
    "ExampleBatchSampler",
    "LengthBatchSampler",
    "TokenBatchSampler",
    "build_batch_sampler",
    "sort_within_buffers",
]


def _as_lengths(lengths: Sequence[int] | np.ndarray | torch.Tensor) -> np.ndarray:
    """Validate once so every later step can use vectorised int64 arithmetic."""
    if isinstance(lengths, torch.Tensor):
        lengths = lengths.detach().cpu().numpy()
    array = np.asarray(lengths)
    if array.ndim != 1:
        raise ValueError(f"lengths must be one-dimensional, got shape {array.shape}")
    if array.size and array.dtype.kind == "f" and not np.all(np.isfinite(array) & (array == np.round(array))):
        raise ValueError("lengths must be whole numbers (e.g. frames or tokens), got non-integer values")
    if array.size and array.dtype.kind not in "iuf":
        raise ValueError(f"lengths must be integers, got dtype {array.dtype}")
    array = array.astype(np.int64, copy=True)
    if array.size and array.min() < 0:
        raise ValueError(f"lengths must be >= 0, got {int(array.min())} at index {int(array.argmin())}")
    return array


def _positive_int(name: str, value: int | None) -> int:
    if value is None or isinstance(value, bool) or int(value) != value or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _default_world(num_replicas: int | None, rank: int | None) -> tuple[int, int]:
    """Like DistributedSampler: take the process group's world when one is initialised, else one process."""
    initialised = torch.distributed.is_available() and torch.distributed.is_initialized()
    if num_replicas is None:
        num_replicas = torch.distributed.get_world_size() if initialised else 1
    if rank is None:
        rank = torch.distributed.get_rank() if initialised else 0
    num_replicas = _positive_int("num_replicas", num_replicas)
    if not 0 <= rank < num_replicas:
        raise ValueError(f"rank must be in [0, {num_replicas - 1}], got {rank}")
    return num_replicas, int(rank)


def sort_within_buffers(
    order: np.ndarray, lengths: np.ndarray, buffer_size: int | None, *, descending: bool = False
) -> np.ndarray:
    """Sort `order` by `lengths[order]` inside consecutive buffers of `buffer_size` (None: one buffer).

    One stable ``np.lexsort`` on (buffer id, length), so ties keep their shuffled order. Buffers bound how far
    an example can move, which keeps batch *composition* random across epochs while lengths inside a batch
    stay similar.
    """
    if order.size == 0:
        return order
    keys = lengths[order]
    if descending:
        keys = -keys
    if buffer_size is None or buffer_size >= order.size:
        return order[np.argsort(keys, kind="stable")]
    buffer_ids = np.arange(order.size) // buffer_size
    return order[np.lexsort((keys, buffer_ids))]


class BatchSamplerBase(Sampler[list[int]], ABC):
    """Shuffling, sharding over ranks, epochs and resumption, shared by every batch type.

    Subclasses only say how an epoch's example order becomes batches: `_arrange` (e.g. sort within buffers)
    and `_cut` (split into batches). Everything else, including the rank padding rule, lives here once:

    * **Deterministic**: the batches of an epoch are a pure function of ``(seed, epoch)`` and the configuration;
      call ``set_epoch(epoch)`` before each epoch, like ``DistributedSampler`` (without it every epoch repeats
      epoch 0's order).
    * **Distributed**: batches are formed *globally* (identically on every rank, no communication) and dealt to
      the ``num_replicas`` ranks round-robin: global batches ``k*R .. k*R+R-1`` form step ``k``, one per rank.
      The step groups are consecutive batches of one sorted buffer, so at every step the ranks hold batches of
      similar cost; the *order of the step groups* is what gets shuffled. Ranks get disjoint batches and the
      same number of them: if the global batch count is not a multiple of ``R``, the first batches of the
      epoch's (pre-shuffle) list are repeated to fill the last step (``drop_last=False``, the only duplicates,
      counted in ``num_padding_batches``), or the surplus batches are dropped (``drop_last=True``).
    * **Resumable**: ``state_dict()`` records ``epoch`` and ``batches_yielded`` (this rank, this epoch); after
      ``load_state_dict`` the next iteration yields exactly the rest of that epoch. Because ``__len__`` is exact
      and the order is a pure function of ``(seed, epoch)``, accelerate's ``skip_first_batches(loader, n)``
      (what the Trainer's resume uses) gives the same result; use one mechanism, not both. ``batches_yielded``
      counts batches *handed to* the ``DataLoader``; with ``num_workers > 0`` it runs ahead of the training
      step by the prefetch depth, so for an exact resume store the steps actually consumed in its place.
    * **Cheap**: the epoch's batch list is built once (numpy permutation + one ``lexsort`` for the buffer sort,
      a loop over *batches*, not examples, for ``"token"``) and cached; iteration only converts arrays to lists.

    Deliberately no ``batch_size`` attribute: accelerate's ``BatchSamplerShard`` reads
    ``batch_sampler.batch_size`` and, when it is set, treats a shorter batch as incomplete and pads or drops
    it, which would corrupt a variable-size batch list.

    Args:
        lengths: per-example cost (e.g. fbank frames + label tokens); only ``len(lengths)`` matters for
            ``"example"``.
        shuffle: shuffle examples and the order of batches each epoch; ``False`` gives a fixed order
            (evaluation), still length-sorted within buffers for ``"length"``/``"token"``.
        seed: non-negative base seed; the epoch's randomness comes from ``(seed, epoch)``.
        drop_last: drop the epoch's incomplete last batch (fixed-size types) and the global batches that
            would not fill a whole step on every rank, instead of padding that step with repeats.
        num_replicas, rank: data-parallel world; default from ``torch.distributed`` if initialised, else 1/0.
    """

    batch_type: str = ""

    def __init__(
        self,
        lengths: Sequence[int] | np.ndarray | torch.Tensor,
        *,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        num_replicas: int | None = None,
        rank: int | None = None,
    ) -> None:
        self.lengths = _as_lengths(lengths)
        if isinstance(seed, bool) or int(seed) != seed or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        self.seed = int(seed)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.num_replicas, self.rank = _default_world(num_replicas, rank)
        self.epoch = 0
        # Indices left out of every epoch (only TokenBatchSampler with oversize="skip" fills it).
        self.skipped: list[int] = []
        self._batches_yielded = 0  # this rank, this epoch: what state_dict reports
        self._resume_at = 0  # pending skip for the next __iter__ (set by load_state_dict)
        self._cache: tuple[tuple[int, int], list[np.ndarray], int] | None = None

    # ---- what subclasses define -------------------------------------------------------------------

    def _arrange(self, order: np.ndarray) -> np.ndarray:
        """Reorder the epoch's example order before cutting; identity unless the type sorts."""
        return order

    @abstractmethod
    def _cut(self, order: np.ndarray) -> list[np.ndarray]:
        """Split the arranged order into consecutive batches (arrays of dataset indices)."""

    def _config(self) -> dict[str, Any]:
        """Everything besides (seed, epoch) that shapes the batch list; a resumed state must match it."""
        return {
            "batch_type": self.batch_type,
            "num_examples": int(self.lengths.size),
            "num_replicas": self.num_replicas,
            "shuffle": self.shuffle,
            "drop_last": self.drop_last,
        }

    # ---- the epoch's batches ----------------------------------------------------------------------

    def _plan(self) -> tuple[list[np.ndarray], int]:
        """This rank's batches for the current epoch and the global padding count, built once per epoch."""
        key = (self.seed, self.epoch)
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, *self._build_plan())
        return self._cache[1], self._cache[2]

    def _build_plan(self) -> tuple[list[np.ndarray], int]:
        rng = np.random.default_rng([self.seed, self.epoch])
        keep = np.ones(self.lengths.size, dtype=bool)
        keep[self.skipped] = False
        order = np.flatnonzero(keep)
        if self.shuffle:
            order = rng.permutation(order)
        batches = self._cut(self._arrange(order))

        replicas = self.num_replicas
        padding = 0
        if self.drop_last:
            batches = batches[: len(batches) - len(batches) % replicas]
        elif batches and len(batches) % replicas:
            padding = replicas - len(batches) % replicas
            batches = batches + [batches[i % len(batches)] for i in range(padding)]

        steps = len(batches) // replicas
        step_order = rng.permutation(steps) if self.shuffle else np.arange(steps)
        mine = [batches[step * replicas + self.rank] for step in step_order]
        return mine, padding

    @property
    def num_padding_batches(self) -> int:
        """Global batches repeated this epoch to give every rank the same count (0 with drop_last)."""
        return self._plan()[1]

    def __len__(self) -> int:
        """Batches this rank yields in a full pass of the current epoch (not reduced by a pending resume)."""
        return len(self._plan()[0])

    def __iter__(self) -> Iterator[list[int]]:
        batches = self._plan()[0]
        start, self._resume_at = self._resume_at, 0
        self._batches_yielded = start
        for position in range(start, len(batches)):
            self._batches_yielded = position + 1
            yield batches[position].tolist()

    # ---- epochs and resumption --------------------------------------------------------------------

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order the next iteration yields; keeps a resume point loaded for it."""
        epoch = int(epoch)
        if epoch != self.epoch:
            self._resume_at = 0
            self._batches_yielded = 0
        self.epoch = epoch

    def state_dict(self) -> dict[str, Any]:
        """Position of this rank in the current epoch, plus the configuration it is only valid for."""
        return {
            "epoch": self.epoch,
            "batches_yielded": self._batches_yielded,
            "seed": self.seed,
            "rank": self.rank,
            **self._config(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume: the next iteration yields the batches of ``state["epoch"]`` after ``batches_yielded``.

        The seed is taken from the state; any other difference in configuration (batch type, sizes, world
        size, dataset size, ...) would make the recorded position meaningless, so it raises ValueError.
        """
        config = self._config()
        mismatched = {k: (state.get(k), v) for k, v in config.items() if k in state and state[k] != v}
        missing = [k for k in ("epoch", "batches_yielded", "seed") if k not in state]
        if missing:
            raise ValueError(f"sampler state lacks {missing}")
        if mismatched:
            details = ", ".join(f"{k}: saved {saved!r} != current {now!r}" for k, (saved, now) in mismatched.items())
            raise ValueError(f"sampler state was saved with a different configuration ({details})")
        self.seed = int(state["seed"])
        self.epoch = int(state["epoch"])
        yielded = int(state["batches_yielded"])
        if not 0 <= yielded <= len(self):
            raise ValueError(f"batches_yielded={yielded} is outside [0, {len(self)}] for epoch {self.epoch}")
        self._resume_at = self._batches_yielded = yielded

    def __repr__(self) -> str:
        settings = ", ".join(f"{k}={v!r}" for k, v in self._config().items() if k != "batch_type")
        return f"{type(self).__name__}({settings}, seed={self.seed}, rank={self.rank}, epoch={self.epoch})"


class ExampleBatchSampler(BatchSamplerBase):
    """``batch_type="example"``: a fixed number of examples per batch.

    Constraint: ``len(batch) == batch_size``; only the epoch's last batch may be smaller (dropped with
    ``drop_last``). Algorithm: cut the epoch order (a seeded permutation, or ``range`` without shuffle) into
    consecutive chunks. Lengths are ignored, so padding is whatever chance gives.

    Example::

        >>> s = ExampleBatchSampler([5] * 10, batch_size=4, shuffle=False)
        >>> list(s)
        [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    """

    batch_type = "example"

    def __init__(self, lengths: Sequence[int] | np.ndarray | torch.Tensor, *, batch_size: int, **kwargs: Any) -> None:
        super().__init__(lengths, **kwargs)
        self.examples_per_batch = _positive_int("batch_size", batch_size)

    def _config(self) -> dict[str, Any]:
        return {**super()._config(), "batch_size": self.examples_per_batch}

    def _cut(self, order: np.ndarray) -> list[np.ndarray]:
        size = self.examples_per_batch
        batches = [order[start : start + size] for start in range(0, order.size, size)]
        if self.drop_last and batches and batches[-1].size < size:
            batches.pop()
        return batches


class LengthBatchSampler(ExampleBatchSampler):
    """``batch_type="length"``: fixed-size batches of similar-length examples (length bucketing).

    Constraint: as ``"example"``, ``len(batch) == batch_size`` except the epoch's last batch.
    Algorithm: per epoch, shuffle the indices with the seeded generator; split them into buffers of
    ``sort_size * num_replicas`` examples (``sort_size`` is per rank, as in FunASR), rounded up to a multiple
    of ``batch_size * num_replicas`` so no batch and no step group straddles two buffers; sort each buffer
    by length; cut into batches; shuffle the order of the step groups. Larger ``sort_size``: less padding,
    less randomness in which examples meet; ``None`` sorts the whole epoch at once.

    Example::

        >>> s = LengthBatchSampler([9, 1, 8, 2, 7, 3], batch_size=2, shuffle=False)
        >>> list(s)
        [[1, 3], [5, 4], [2, 0]]
    """

    batch_type = "length"

    def __init__(
        self,
        lengths: Sequence[int] | np.ndarray | torch.Tensor,
        *,
        batch_size: int,
        sort_size: int | None = 1024,
        **kwargs: Any,
    ) -> None:
        super().__init__(lengths, batch_size=batch_size, **kwargs)
        self.sort_size = None if sort_size is None else _positive_int("sort_size", sort_size)

    def _config(self) -> dict[str, Any]:
        return {**super()._config(), "sort_size": self.sort_size}

    def _arrange(self, order: np.ndarray) -> np.ndarray:
        buffer_size = None
        if self.sort_size is not None:
            step = self.examples_per_batch * self.num_replicas
            buffer_size = -(-self.sort_size * self.num_replicas // step) * step
        return sort_within_buffers(order, self.lengths, buffer_size)


class TokenBatchSampler(BatchSamplerBase):
    """``batch_type="token"``: batches bounded by their padded size, as FunASR's ``batch_type: token``.

    Constraint: ``max(lengths[i] for i in batch) * len(batch) <= max_tokens`` and, if given,
    ``len(batch) <= max_batch_size``. A zero length counts as 1 here.
    Algorithm: per epoch, shuffle; split into buffers of ``sort_size * num_replicas`` examples (``None``: the
    whole epoch); sort each buffer by length *descending*; walk each buffer greedily, giving a batch that
    starts at a length-``L`` example ``min(max_tokens // L, max_batch_size, rest of buffer)`` examples (the
    first is the longest, so this is the most that fits); shuffle the order of the step groups.

    Oversize examples (``length > max_tokens``) are never dropped silently:

    * ``oversize="single"`` (default): each gets a batch of its own, the one case where a batch exceeds the
      budget; a warning with their indices is logged when the sampler is built.
    * ``oversize="skip"``: they are left out of every epoch and listed in ``self.skipped`` (also logged), for
      the caller to report or to filter from the dataset.

    With buffers the number of batches can change slightly from epoch to epoch; with ``sort_size=None`` the
    batch sizes depend only on the sorted lengths, so the count is the same every epoch.

    Example::

        >>> s = TokenBatchSampler([100, 300, 200, 50, 700], max_tokens=600, shuffle=False)
        >>> list(s)
        [[4], [1, 2], [0, 3]]
    """

    batch_type = "token"

    def __init__(
        self,
        lengths: Sequence[int] | np.ndarray | torch.Tensor,
        *,
        max_tokens: int,
        max_batch_size: int | None = None,
        sort_size: int | None = 1024,
        oversize: OversizePolicy = "single",
        **kwargs: Any,
    ) -> None:
        super().__init__(lengths, **kwargs)
        self.max_tokens = _positive_int("max_tokens", max_tokens)
        self.max_batch_size = None if max_batch_size is None else _positive_int("max_batch_size", max_batch_size)
        self.sort_size = None if sort_size is None else _positive_int("sort_size", sort_size)
        if oversize not in ("single", "skip"):
            raise ValueError(f"oversize must be 'single' or 'skip', got {oversize!r}")
        self.oversize: OversizePolicy = oversize
        too_long = np.flatnonzero(self.lengths > self.max_tokens)
        if too_long.size:
            shown = too_long[:10].tolist()
            more = f" and {too_long.size - 10} more" if too_long.size > 10 else ""
            if oversize == "skip":
                self.skipped = too_long.tolist()
                action = "are SKIPPED every epoch (see sampler.skipped)"
            else:
                action = "each get a batch of their own, over the budget"
            logger.warning(
                "%d example(s) longer than max_tokens=%d %s: indices %s%s (longest %d)",
                too_long.size,
                self.max_tokens,
                action,
                shown,
                more,
                int(self.lengths[too_long].max()),
            )

    def _config(self) -> dict[str, Any]:
        return {
            **super()._config(),
            "max_tokens": self.max_tokens,
            "max_batch_size": self.max_batch_size,
            "sort_size": self.sort_size,
            "oversize": self.oversize,
        }

    def _arrange(self, order: np.ndarray) -> np.ndarray:
        buffer_size = None if self.sort_size is None else self.sort_size * self.num_replicas
        return sort_within_buffers(order, self.lengths, buffer_size, descending=True)

    def _cut(self, order: np.ndarray) -> list[np.ndarray]:
        if order.size == 0:
            return []
        budget_counts = self.max_tokens // np.maximum(self.lengths[order], 1)  # examples that fit, per start
        if self.max_batch_size is not None:
            np.minimum(budget_counts, self.max_batch_size, out=budget_counts)
        np.maximum(budget_counts, 1, out=budget_counts)  # an oversize example still forms its own batch
        buffer = order.size if self.sort_size is None else self.sort_size * self.num_replicas
        counts = budget_counts.tolist()
        bounds: list[int] = []
        start = 0
        for buffer_end in range(buffer, order.size + buffer, buffer):
            buffer_end = min(buffer_end, order.size)
            while start < buffer_end:
                start = min(start + counts[start], buffer_end)
                bounds.append(start)
        return np.split(order, bounds[:-1]) if bounds else []


BATCH_SAMPLERS: dict[str, type[BatchSamplerBase]] = {
    cls.batch_type: cls for cls in (ExampleBatchSampler, LengthBatchSampler, TokenBatchSampler)
}


def build_batch_sampler(
    batch_type: str,
    lengths: Sequence[int] | np.ndarray | torch.Tensor,
    *,
    batch_size: int | None = None,
    max_tokens: int | None = None,
    max_batch_size: int | None = None,
    sort_size: int | None = 1024,
    oversize: OversizePolicy = "single",
    shuffle: bool = True,
    seed: int = 0,
    drop_last: bool = False,
    num_replicas: int | None = None,
    rank: int | None = None,
) -> BatchSamplerBase:
    """Build the sampler for a FunASR-style ``batch_type`` from one flat set of options (e.g. a config).

    ``"example"``/``"length"`` need ``batch_size``; ``"token"`` needs ``max_tokens`` (FunASR calls that budget
    ``batch_size`` under ``batch_type: token``; here the two are kept apart) and takes ``max_batch_size`` and
    ``oversize``. Options that do not apply to the chosen type are ignored.
    """
    if batch_type not in BATCH_SAMPLERS:
        raise ValueError(f"unknown batch_type {batch_type!r}; valid batch types: {sorted(BATCH_SAMPLERS)}")
    common: dict[str, Any] = dict(shuffle=shuffle, seed=seed, drop_last=drop_last, num_replicas=num_replicas, rank=rank)
    if batch_type == "token":
        if max_tokens is None:
            raise ValueError("batch_type='token' needs max_tokens (the padded-size budget per batch)")
        return TokenBatchSampler(
            lengths,
            max_tokens=max_tokens,
            max_batch_size=max_batch_size,
            sort_size=sort_size,
            oversize=oversize,
            **common,
        )
    if batch_size is None:
        raise ValueError(f"batch_type={batch_type!r} needs batch_size (examples per batch)")
    if batch_type == "length":
        return LengthBatchSampler(lengths, batch_size=batch_size, sort_size=sort_size, **common)
    return ExampleBatchSampler(lengths, batch_size=batch_size, **common)
