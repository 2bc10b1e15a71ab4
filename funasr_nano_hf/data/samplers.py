"""Batch samplers for speech fine-tuning: FunASR's three ``batch_type`` s, deterministic, sharded, resumable.

Each sampler is a ``torch.utils.data.Sampler[list[int]]`` that yields one list of dataset indices per batch, for
``DataLoader(dataset, batch_sampler=...)``. Its only per-example input is ``lengths`` (the cost of each example:
FunASR's ``source_len`` = fbank frames + text tokens), so the dataset is never touched.
`build_batch_sampler(batch_type, ...)` picks the class, with FunASR's meaning of ``batch_size``:

* ``"example"`` (`ExampleBatchSampler`): ``batch_size`` examples per batch;
* ``"length"`` / ``"token"`` (`LengthBatchSampler`, `TokenBatchSampler`, identical as in FunASR):
  ``batch_size`` is a *padded budget*, ``max(lengths in batch) * len(batch) <= batch_size``, batches formed
  greedily in buffers of ``sort_size`` examples sorted by length, re-formed every epoch.

What all share -- epochs as a pure function of ``(seed, epoch)``, sharding over ranks, ``state_dict``
resumption, a batch count that can be fixed over the epochs of a run -- is `BatchSamplerBase`; each class
docstring states its constraint and algorithm.

Example::

    >>> from funasr_nano_hf.data.samplers import build_batch_sampler
    >>> lengths = [120, 900, 450, 300, 610, 75]            # fbank frames + text tokens per example
    >>> sampler = build_batch_sampler("token", lengths, batch_size=1200, seed=0)
    >>> all(max(lengths[i] for i in b) * len(b) <= 1200 for b in sampler)
    True
    >>> sorted(i for b in sampler for i in b)
    [0, 1, 2, 3, 4, 5]

Hand-written (after FunASR's ``CustomDistributedBufferDynamicBatchSampler`` and lhotse's resumable samplers):
torch's and accelerate's samplers have no padded-size batching, and transformers' ``group_by_length`` has no
budget.
"""

from __future__ import annotations

import heapq
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
    "DynamicBatchSampler",
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
      a loop over *batches*, not examples, for ``"length"``/``"token"``) and cached; iteration only converts
      arrays to lists.
    * **A fixed count per epoch when asked** (`fix_num_batches`): the Hugging Face Trainer reads
      ``len(dataloader)`` once and runs that many batches every epoch, but buffered length batching forms a
      slightly different number of batches each epoch. After ``fix_num_batches(num_epochs)`` every epoch has
      the largest count of those epochs: an epoch that formed fewer batches splits its largest batches in two
      (each example still once, every budget still kept) until it has as many.

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
        self.num_batches: int | None = None  # global batches per epoch once fixed (`fix_num_batches`)

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
            "num_batches": self.num_batches,
        }

    # ---- the epoch's batches ----------------------------------------------------------------------

    def _plan(self) -> tuple[list[np.ndarray], int]:
        """This rank's batches for the current epoch and the global padding count, built once per epoch."""
        key = (self.seed, self.epoch)
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, *self._build_plan())
        return self._cache[1], self._cache[2]

    def _epoch_batches(self, epoch: int, rng: np.random.Generator | None = None) -> list[np.ndarray]:
        """The global batches of `epoch` as formed (before any split or rank padding)."""
        rng = rng if rng is not None else np.random.default_rng([self.seed, epoch])
        keep = np.ones(self.lengths.size, dtype=bool)
        keep[self.skipped] = False
        order = np.flatnonzero(keep)
        if self.shuffle:
            order = rng.permutation(order)
        return self._cut(self._arrange(order))

    def _build_plan(self) -> tuple[list[np.ndarray], int]:
        rng = np.random.default_rng([self.seed, self.epoch])
        batches = self._epoch_batches(self.epoch, rng)
        if self.num_batches is not None:
            if len(batches) < self.num_batches:
                batches = split_largest(batches, self.num_batches)
            elif len(batches) > self.num_batches:
                logger.warning(
                    "epoch %d forms %d batches, more than the %d fixed by fix_num_batches (an epoch beyond the "
                    "ones it counted): a Trainer that read len() once stops this epoch after %d",
                    self.epoch,
                    len(batches),
                    self.num_batches,
                    self.num_batches,
                )

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

    def fix_num_batches(self, num_epochs: int) -> int:
        """Give epochs ``0 .. num_epochs-1`` the same number of batches (the largest any of them forms) and
        return this rank's ``len()``, for a consumer that reads the length once (the Hugging Face Trainer
        sizes its epochs, ``max_steps`` and schedules from it). Epochs that form fewer batches split their
        largest batches (`split_largest`): no example is repeated or left out, and no budget is exceeded."""
        num_epochs = _positive_int("num_epochs", num_epochs)
        self.num_batches = None
        self.num_batches = max(len(self._epoch_batches(epoch)) for epoch in range(num_epochs)) or None
        self._cache = None
        return len(self)

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


class DynamicBatchSampler(BatchSamplerBase):
    """FunASR's ``batch_type`` ``"length"`` / ``"token"`` (the two are one algorithm there): batches bounded
    by their padded size.

    Constraint: ``max(lengths[i] for i in batch) * len(batch) <= batch_size`` (``lengths`` = FunASR's
    ``source_len``, fbank frames + text tokens) and ``len(batch) <= batch_size_sample_max``. A zero length counts
    as 1.

    Algorithm (FunASR's ``CustomDistributedBufferDynamicBatchSampler``): per epoch, shuffle the examples; cut the
    order into buffers of ``sort_size * num_replicas`` examples (``sort_size`` is per rank, as in FunASR) and
    sort each buffer by length, shortest first; walk each buffer greedily, adding the next example while the
    batch's padded size and count stay within the limits, else starting a new batch. Batches never straddle
    two buffers. ``sort_size=None`` sorts the whole epoch as one buffer; ``sort_size <= 0`` does not sort (FunASR's
    sampler without ``sort_size``). The order of the step groups is shuffled (as for every type here).
    Larger ``sort_size``: less padding, less randomness in which examples meet; because the shuffle changes
    with the epoch, so do the batches.

    Oversize examples (``length > batch_size``) are never dropped silently:

    * ``oversize="single"`` (default, FunASR's behaviour): each gets a batch of its own, the one case where a
      batch exceeds the budget; a warning with their indices is logged when the sampler is built.
    * ``oversize="skip"``: they are left out of every epoch and listed in ``self.skipped`` (also logged), for
      the caller to report or to filter from the dataset.

    With buffers the number of batches can change slightly from epoch to epoch (`fix_num_batches` fixes it);
    with ``sort_size=None`` the batches depend only on the sorted lengths, so the count is the same every epoch.

    Example::

        >>> s = TokenBatchSampler([100, 300, 200, 50, 700], batch_size=600, shuffle=False)
        >>> list(s)
        [[3, 0, 2], [1], [4]]
    """

    def __init__(
        self,
        lengths: Sequence[int] | np.ndarray | torch.Tensor,
        *,
        batch_size: int,
        batch_size_sample_max: int | None = 200,
        sort_size: int | None = 1024,
        oversize: OversizePolicy = "single",
        **kwargs: Any,
    ) -> None:
        super().__init__(lengths, **kwargs)
        # Deliberately not `self.batch_size` (see BatchSamplerBase: accelerate would pad "short" batches).
        self.budget = _positive_int("batch_size", batch_size)
        self.batch_size_sample_max = (
            None if batch_size_sample_max is None else _positive_int("batch_size_sample_max", batch_size_sample_max)
        )
        if sort_size is not None and (isinstance(sort_size, bool) or int(sort_size) != sort_size):
            raise ValueError(f"sort_size must be an integer or None, got {sort_size!r}")
        self.sort_size = None if sort_size is None else int(sort_size)
        if oversize not in ("single", "skip"):
            raise ValueError(f"oversize must be 'single' or 'skip', got {oversize!r}")
        self.oversize: OversizePolicy = oversize
        too_long = np.flatnonzero(self.lengths > self.budget)
        if too_long.size:
            shown = too_long[:10].tolist()
            more = f" and {too_long.size - 10} more" if too_long.size > 10 else ""
            if oversize == "skip":
                self.skipped = too_long.tolist()
                action = "are SKIPPED every epoch (see sampler.skipped)"
            else:
                action = "each get a batch of their own, over the budget"
            logger.warning(
                "%d example(s) longer than the padded budget batch_size=%d (batch_type %s: fbank frames + text "
                "tokens per batch) %s: indices %s%s (longest %d)",
                too_long.size,
                self.budget,
                self.batch_type,
                action,
                shown,
                more,
                int(self.lengths[too_long].max()),
            )

    def _config(self) -> dict[str, Any]:
        return {
            **super()._config(),
            "batch_size": self.budget,
            "batch_size_sample_max": self.batch_size_sample_max,
            "sort_size": self.sort_size,
            "oversize": self.oversize,
        }

    def _buffer_size(self, size: int) -> int:
        """Examples per sorted buffer (all of them when the whole epoch is one buffer or nothing is sorted)."""
        if self.sort_size is None or self.sort_size <= 0:
            return size
        return self.sort_size * self.num_replicas

    def _arrange(self, order: np.ndarray) -> np.ndarray:
        if self.sort_size is not None and self.sort_size <= 0:
            return order
        return sort_within_buffers(order, self.lengths, self._buffer_size(order.size))

    def _cut(self, order: np.ndarray) -> list[np.ndarray]:
        if order.size == 0:
            return []
        lengths = np.maximum(self.lengths[order], 1)
        cap = self.batch_size_sample_max or order.size
        buffer = self._buffer_size(order.size)
        batches: list[np.ndarray] = []
        for buffer_start in range(0, order.size, buffer):
            buffer_end = min(buffer_start + buffer, order.size)
            for start, end in cut_by_budget(lengths[buffer_start:buffer_end], self.budget, cap):
                batches.append(order[buffer_start + start : buffer_start + end])
        return batches


def cut_by_budget(lengths: np.ndarray, budget: int, cap: int) -> list[tuple[int, int]]:
    """(start, end) of consecutive batches of `lengths` (ordered as they will be batched, each >= 1) under FunASR's
    greedy rule: add the next example while max(len) * count <= budget and count <= cap."""
    bounds: list[tuple[int, int]] = []
    start = 0
    while start < lengths.size:
        # The padded size of the first k+1 examples, cummax * (k+1), never decreases with k, so the batch is the
        # prefix where it stays within the budget (at least one example: an oversize one goes alone).
        window = min(lengths.size - start, cap, max(budget // int(lengths[start]), 1))
        padded = np.maximum.accumulate(lengths[start : start + window]) * np.arange(1, window + 1)
        count = max(int(np.searchsorted(padded, budget, side="right")), 1)
        bounds.append((start, start + count))
        start += count
    return bounds


class LengthBatchSampler(DynamicBatchSampler):
    """``batch_type="length"``: FunASR's padded-budget batching (`DynamicBatchSampler`); the same algorithm as
    ``"token"``, as in FunASR, where every batch type other than ``"example"`` is this one."""

    batch_type = "length"


class TokenBatchSampler(DynamicBatchSampler):
    """``batch_type="token"``: FunASR's padded-budget batching (`DynamicBatchSampler`)."""

    batch_type = "token"


def split_largest(batches: list[np.ndarray], target: int) -> list[np.ndarray]:
    """`batches` with their largest batches split in two (first half, second half, in place) until there are
    `target` of them; ties go to the earlier batch. Halves of a batch keep its budget: each is at most as long
    and no wider. Raises ValueError when the examples cannot form `target` batches."""
    if target > sum(len(batch) for batch in batches):
        raise ValueError(f"cannot form {target} batches from {sum(len(b) for b in batches)} examples")
    # Each entry is (-size, position key, batch); a split batch's halves get keys (key, 0) and (key, 1), which
    # sort right where the batch was.
    heap = [(-len(batch), (position,), batch) for position, batch in enumerate(batches)]
    heapq.heapify(heap)
    for _ in range(target - len(batches)):
        _, key, batch = heapq.heappop(heap)
        half = len(batch) // 2
        heapq.heappush(heap, (-half, (*key, 0), batch[:half]))
        heapq.heappush(heap, (-(len(batch) - half), (*key, 1), batch[half:]))
    return [batch for _, _, batch in sorted(heap, key=lambda entry: entry[1])]


BATCH_SAMPLERS: dict[str, type[BatchSamplerBase]] = {
    cls.batch_type: cls for cls in (ExampleBatchSampler, LengthBatchSampler, TokenBatchSampler)
}


def build_batch_sampler(
    batch_type: str,
    lengths: Sequence[int] | np.ndarray | torch.Tensor,
    *,
    batch_size: int | None = None,
    batch_size_sample_max: int | None = 200,
    sort_size: int | None = 1024,
    oversize: OversizePolicy = "single",
    shuffle: bool = True,
    seed: int = 0,
    drop_last: bool = False,
    num_replicas: int | None = None,
    rank: int | None = None,
) -> BatchSamplerBase:
    """Build the sampler for a FunASR ``batch_type`` from one flat set of options, with FunASR's meaning of
    ``batch_size``: examples per batch for ``"example"``, the padded budget (fbank frames + text tokens of the
    longest example times the number of examples) for ``"length"`` / ``"token"``, which also take
    ``batch_size_sample_max``, ``sort_size`` and ``oversize``. Options that do not apply are ignored."""
    if batch_type not in BATCH_SAMPLERS:
        raise ValueError(f"unknown batch_type {batch_type!r}; valid batch types: {sorted(BATCH_SAMPLERS)}")
    if batch_size is None:
        what = "examples per batch" if batch_type == "example" else "the padded budget per batch"
        raise ValueError(f"batch_type={batch_type!r} needs batch_size ({what})")
    common: dict[str, Any] = dict(shuffle=shuffle, seed=seed, drop_last=drop_last, num_replicas=num_replicas, rank=rank)
    if batch_type == "example":
        return ExampleBatchSampler(lengths, batch_size=batch_size, **common)
    return BATCH_SAMPLERS[batch_type](
        lengths,
        batch_size=batch_size,
        batch_size_sample_max=batch_size_sample_max,
        sort_size=sort_size,
        oversize=oversize,
        **common,
    )
