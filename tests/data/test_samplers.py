"""Batch samplers: budgets, FunASR's own samplers as reference, coverage, determinism, batches re-formed every
epoch, a fixed count per epoch, sharding, resumption, DataLoader/accelerate integration."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from funasr_nano_hf.data.samplers import (
    BATCH_SAMPLERS,
    BatchSamplerBase,
    ExampleBatchSampler,
    LengthBatchSampler,
    TokenBatchSampler,
    build_batch_sampler,
    split_largest,
)

BATCH_TYPES = sorted(BATCH_SAMPLERS)


def random_lengths(n: int = 1000, seed: int = 0, low: int = 20, high: int = 1500) -> np.ndarray:
    return np.random.default_rng(seed).integers(low, high, size=n)


def make(batch_type: str, lengths, **kwargs) -> BatchSamplerBase:
    """One call site for all types: 8 examples per batch, or a padded budget of ~8 average examples."""
    kwargs.setdefault("batch_size", 8 if batch_type == "example" else 6000)
    kwargs.setdefault("sort_size", 128)
    return build_batch_sampler(batch_type, lengths, **kwargs)


def padded_size(batches, lengths) -> int:
    return sum(max(lengths[i] for i in b) * len(b) for b in batches)


class IndexDataset(Dataset):
    """Returns its index, so a DataLoader's output can be compared with the sampler's batches."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> int:
        return index


# ---- constraints -----------------------------------------------------------------------------------


@pytest.mark.parametrize("sampler_class", [LengthBatchSampler, TokenBatchSampler])
@pytest.mark.parametrize("cap", [None, 5])
@pytest.mark.parametrize("sort_size", [None, 0, 64, 1000])
def test_padded_budget_respected(sampler_class, sort_size, cap):
    lengths = random_lengths(2000, seed=1)
    sampler = sampler_class(lengths, batch_size=4000, batch_size_sample_max=cap, sort_size=sort_size, seed=3)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert batches
        for batch in batches:
            assert max(lengths[i] for i in batch) * len(batch) <= 4000
            if cap is not None:
                assert len(batch) <= cap
        if sort_size != 0:  # greedy over sorted buffers: the budget is actually used
            assert padded_size(batches, lengths) > 0.7 * 4000 * len(batches)


def test_token_oversize_single_gets_own_batch_and_warns(caplog):
    lengths = random_lengths(300, seed=2, high=900)
    lengths[[7, 123]] = [5000, 2500]
    with caplog.at_level(logging.WARNING, logger="funasr_nano_hf.data.samplers"):
        sampler = TokenBatchSampler(lengths, batch_size=2000, seed=0)
    assert "2 example(s) longer than the padded budget batch_size=2000" in caplog.text and "[7, 123]" in caplog.text
    assert sampler.skipped == []
    batches = list(sampler)
    assert Counter(i for b in batches for i in b) == Counter(range(300))
    for batch in batches:
        if max(lengths[i] for i in batch) > 2000:
            assert len(batch) == 1 and batch[0] in (7, 123)
        else:
            assert max(lengths[i] for i in batch) * len(batch) <= 2000


def test_token_oversize_skip_is_reported(caplog):
    lengths = random_lengths(300, seed=2, high=900)
    lengths[[7, 123]] = [5000, 2500]
    with caplog.at_level(logging.WARNING, logger="funasr_nano_hf.data.samplers"):
        sampler = make("token", lengths, batch_size=2000, oversize="skip")
    assert "SKIPPED" in caplog.text
    assert sampler.skipped == [7, 123]
    for epoch in range(2):
        sampler.set_epoch(epoch)
        seen = [i for b in sampler for i in b]
        assert sorted(seen) == sorted(set(range(300)) - {7, 123})


def test_example_batch_sizes():
    lengths = random_lengths(203)
    sizes = [len(b) for b in make("example", lengths, batch_size=10)]
    assert sorted(sizes) == [3] + [10] * 20  # only the epoch's last batch is short
    assert [len(b) for b in make("example", lengths, batch_size=10, drop_last=True)] == [10] * 20


def test_length_and_token_are_one_algorithm():
    """As in FunASR, where every batch type but "example" is the same padded-budget sampler."""
    lengths = random_lengths(700, seed=8)
    for epoch in range(2):
        samplers = [make(batch_type, lengths, seed=4) for batch_type in ("length", "token")]
        for sampler in samplers:
            sampler.set_epoch(epoch)
        assert list(samplers[0]) == list(samplers[1])


def test_budget_batches_pad_less_than_example_batches():
    lengths = random_lengths(4000, seed=5)
    by_example = padded_size(make("example", lengths, batch_size=16), lengths)
    by_length = padded_size(make("length", lengths, batch_size=16 * 760, sort_size=256), lengths)
    useful = int(lengths.sum())
    assert by_length - useful < 0.1 * (by_example - useful)


def _funasr_samplers():
    from funasr.datasets.audio_datasets import samplers as funasr_samplers

    return funasr_samplers


class _SourceLengths:
    """The only part of FunASR's dataset its batch samplers read: `get_source_len(index)`, `len()`."""

    def __init__(self, lengths) -> None:
        self.lengths = lengths

    def __len__(self) -> int:
        return len(self.lengths)

    def get_source_len(self, index: int) -> int:
        return int(self.lengths[index])


@pytest.mark.parametrize("batch_type", ["length", "token"])
@pytest.mark.parametrize("sort_size", [50, 300, 1024])
def test_batches_are_funasrs_own(batch_type, sort_size):
    """FunASR's `CustomDistributedBufferDynamicBatchSampler` (what `batch_type: length|token` with `sort_size`
    builds) on the same lengths, unshuffled (its validation mode), forms exactly our batches. Its empty batch
    (when a buffer starts with an example over the budget) is left out here; its sample cap and source-length
    skip are set out of reach (their differences are documented)."""
    lengths = random_lengths(2500, seed=sort_size)
    lengths[[10, 700]] = 7000  # over the budget: a batch of its own in both
    reference = _funasr_samplers().CustomDistributedBufferDynamicBatchSampler(
        _SourceLengths(lengths),
        batch_size=5000,
        batch_type=batch_type,
        is_training=False,
        sort_size=sort_size,
        max_token_length=10**9,
        batch_size_sample_max=10**9,
    )
    theirs = [batch for batch in reference if batch]
    ours = make(batch_type, lengths, batch_size=5000, sort_size=sort_size, batch_size_sample_max=None, shuffle=False)
    assert list(ours) == theirs


def test_unsorted_batches_are_funasrs_own():
    """`sort_size <= 0` is FunASR's sampler without sort_size (`CustomDistributedDynamicBatchSampler`)."""
    lengths = random_lengths(1500, seed=12)
    reference = _funasr_samplers().CustomDistributedDynamicBatchSampler(
        _SourceLengths(lengths), batch_size=4500, is_training=False, max_token_length=10**9
    )
    ours = make("length", lengths, batch_size=4500, sort_size=0, shuffle=False)
    assert list(ours) == [batch for batch in reference if batch]


@pytest.mark.parametrize("batch_type", ["length", "token"])
def test_batches_are_re_formed_every_epoch(batch_type):
    """FunASR shuffles before cutting its sorted buffers, so which examples share a batch changes per epoch."""
    lengths = random_lengths(1200, seed=2)
    sampler = make(batch_type, lengths, sort_size=256, seed=1)
    compositions = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        compositions.append({frozenset(batch) for batch in sampler})
    assert compositions[0] != compositions[1] != compositions[2]
    assert len(compositions[0] & compositions[1]) < 0.5 * len(compositions[0])


def test_fix_num_batches_gives_every_epoch_the_same_count():
    lengths = random_lengths(3000, seed=0)
    sampler = make("token", lengths, batch_size=6000, sort_size=1024, seed=3)
    formed = []
    for epoch in range(6):
        sampler.set_epoch(epoch)
        formed.append(len(sampler))
    assert len(set(formed)) > 1  # buffered batching forms a varying count: what needs fixing
    sampler.set_epoch(0)
    assert sampler.fix_num_batches(6) == max(formed) == len(sampler)
    for epoch in range(6):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler) == max(formed)
        assert sorted(i for b in batches for i in b) == list(range(3000))  # each example once, none repeated
        assert all(max(lengths[i] for i in b) * len(b) <= 6000 for b in batches)
    assert sampler.state_dict()["num_batches"] == max(formed)


def test_fix_num_batches_on_ranks():
    lengths = random_lengths(2000, seed=5)
    samplers = ranks("token", lengths, 2, sort_size=200)
    counts = {sampler.fix_num_batches(4) for sampler in samplers}
    assert len(counts) == 1
    for epoch in range(4):
        for sampler in samplers:
            sampler.set_epoch(epoch)
        per_rank = [list(s) for s in samplers]
        assert [len(batches) for batches in per_rank] == [len(samplers[0])] * 2
        seen = Counter(i for batches in per_rank for b in batches for i in b)
        assert set(seen) == set(range(2000))


def test_split_largest():
    batches = [np.arange(0, 3), np.arange(3, 8), np.arange(8, 9), np.arange(9, 13)]
    split = split_largest(batches, 6)
    assert [b.tolist() for b in split] == [[0, 1, 2], [3, 4], [5, 6, 7], [8], [9, 10], [11, 12]]
    assert split_largest(batches, 4) == batches
    with pytest.raises(ValueError, match="cannot form 14 batches from 13 examples"):
        split_largest(batches, 14)


# ---- coverage and determinism ----------------------------------------------------------------------


@pytest.mark.parametrize("batch_type", BATCH_TYPES)
def test_every_example_exactly_once_per_epoch(batch_type):
    lengths = random_lengths(1001)
    sampler = make(batch_type, lengths, seed=7)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler)
        assert sorted(i for b in batches for i in b) == list(range(1001))
        assert all(isinstance(i, int) for b in batches for i in b)


@pytest.mark.parametrize("batch_type", BATCH_TYPES)
def test_order_is_a_function_of_seed_and_epoch(batch_type):
    lengths = random_lengths(500)

    def epoch_batches(seed: int, epoch: int) -> list[list[int]]:
        sampler = make(batch_type, lengths, seed=seed)
        sampler.set_epoch(epoch)
        return list(sampler)

    assert epoch_batches(0, 1) == epoch_batches(0, 1)  # fresh instances agree
    assert epoch_batches(0, 1) != epoch_batches(0, 2)
    assert epoch_batches(0, 1) != epoch_batches(1, 1)
    sampler = make(batch_type, lengths, seed=0)
    sampler.set_epoch(1)
    assert list(sampler) == list(sampler)  # re-iterating an epoch repeats it


def test_no_shuffle_is_fixed_and_sorted():
    lengths = random_lengths(100)
    example = [i for b in make("example", lengths, shuffle=False) for i in b]
    assert example == list(range(100))
    sampler = make("length", lengths, shuffle=False, sort_size=None)
    first = list(sampler)
    sampler.set_epoch(5)
    assert list(sampler) == first
    flat = [lengths[i] for b in first for i in b]
    assert flat == sorted(flat)


def test_token_count_is_epoch_invariant_with_global_sort():
    lengths = random_lengths(3000, seed=9)
    sampler = make("token", lengths, sort_size=None, batch_size=5000)
    counts = set()
    for epoch in range(4):
        sampler.set_epoch(epoch)
        counts.add(len(sampler))
        assert len(list(sampler)) == len(sampler)
    assert len(counts) == 1


# ---- several ranks ---------------------------------------------------------------------------------


def ranks(batch_type: str, lengths, num_replicas: int, epoch: int = 0, **kwargs) -> list[BatchSamplerBase]:
    """One sampler per rank, as each process of a data-parallel job would build it."""
    samplers = [
        make(batch_type, lengths, num_replicas=num_replicas, rank=r, seed=11, **kwargs) for r in range(num_replicas)
    ]
    for sampler in samplers:
        sampler.set_epoch(epoch)
    return samplers


@pytest.mark.parametrize("batch_type", BATCH_TYPES)
@pytest.mark.parametrize("n", [1000, 1003, 13])
def test_two_ranks_disjoint_equal_counts(batch_type, n):
    lengths = random_lengths(n, seed=n)
    samplers = ranks(batch_type, lengths, 2, epoch=3)
    per_rank = [list(s) for s in samplers]
    assert len(per_rank[0]) == len(per_rank[1]) == len(samplers[0]) == len(samplers[1]) > 0
    counts = Counter(i for batches in per_rank for b in batches for i in b)
    assert set(counts) == set(range(n))
    padding = samplers[0].num_padding_batches
    assert padding == samplers[1].num_padding_batches
    if padding == 0:
        assert set(map(frozenset, per_rank[0])).isdisjoint(map(frozenset, per_rank[1]))
        assert max(counts.values()) == 1
    else:  # the duplicates are whole batches repeated, one per padding batch
        all_batches = Counter(frozenset(b) for batches in per_rank for b in batches)
        repeated = [b for b, c in all_batches.items() if c > 1]
        assert len(repeated) == padding
        assert sum(counts.values()) - n == sum(len(b) for b in repeated)


@pytest.mark.parametrize("batch_type", BATCH_TYPES)
def test_ranks_drop_last_no_duplicates(batch_type):
    lengths = random_lengths(1003, seed=4)
    samplers = ranks(batch_type, lengths, 3, drop_last=True)
    per_rank = [list(s) for s in samplers]
    assert len({len(b) for b in per_rank}) == 1
    seen = [i for batches in per_rank for b in batches for i in b]
    assert len(seen) == len(set(seen)) > 900
    assert samplers[0].num_padding_batches == 0


def test_ranks_get_similar_lengths_at_each_step():
    """Step groups come from one sorted buffer, so both ranks' batches at a step have similar lengths."""
    lengths = random_lengths(4096, seed=6)
    r0, r1 = (list(s) for s in ranks("length", lengths, 2, sort_size=512))
    gap = np.mean([abs(max(lengths[a]) - max(lengths[b])) for a, b in zip(r0, r1)])
    assert gap < 50  # the spread of lengths is ~1500


# ---- resumption ------------------------------------------------------------------------------------


@pytest.mark.parametrize("batch_type", BATCH_TYPES)
def test_state_dict_resumes_mid_epoch(batch_type):
    lengths = random_lengths(800)
    sampler = make(batch_type, lengths, seed=5, num_replicas=2, rank=1)
    sampler.set_epoch(2)
    full = list(sampler)
    iterator = iter(sampler)
    consumed = [next(iterator) for _ in range(7)]
    assert consumed == full[:7]
    state = sampler.state_dict()
    assert (state["epoch"], state["batches_yielded"], state["seed"]) == (2, 7, 5)

    resumed = make(batch_type, lengths, seed=999, num_replicas=2, rank=1)  # the seed comes from the state
    resumed.load_state_dict(state)
    assert resumed.state_dict() == state
    resumed.set_epoch(2)  # a Trainer re-announcing the same epoch keeps the resume point
    assert len(resumed) == len(full)
    assert list(resumed) == full[7:]
    assert list(resumed) == full  # the resume point is used once; the epoch then repeats whole
    resumed.set_epoch(3)
    sampler.set_epoch(3)
    assert list(resumed) == list(sampler)


def test_set_epoch_to_another_epoch_discards_resume_point():
    sampler = make("token", random_lengths(300))
    sampler.set_epoch(1)
    sampler.load_state_dict({**sampler.state_dict(), "batches_yielded": 3})
    sampler.set_epoch(2)
    assert len(list(sampler)) == len(sampler)


def test_load_state_dict_rejects_other_configuration():
    lengths = random_lengths(300)
    state = make("length", lengths, batch_size=8000).state_dict()
    with pytest.raises(ValueError, match="batch_size: saved 8000 != current 4000"):
        make("length", lengths, batch_size=4000).load_state_dict(state)
    with pytest.raises(ValueError, match="num_examples"):
        make("length", lengths[:-1], batch_size=8000).load_state_dict(state)
    with pytest.raises(ValueError, match="batches_yielded"):
        make("length", lengths, batch_size=8000).load_state_dict({**state, "batches_yielded": 10_000})
    fixed = make("length", lengths, batch_size=8000)
    fixed.fix_num_batches(3)
    with pytest.raises(ValueError, match="num_batches"):
        fixed.load_state_dict(state)


@pytest.mark.parametrize("batch_type", BATCH_TYPES)
def test_accelerate_skip_first_batches_matches(batch_type):
    from accelerate.data_loader import SkipBatchSampler

    sampler = make(batch_type, random_lengths(500), seed=2)
    sampler.set_epoch(4)
    skipped = SkipBatchSampler(sampler, skip_batches=5)
    assert len(skipped) == len(sampler) - 5
    assert list(skipped) == list(sampler)[5:]


@pytest.mark.parametrize("batch_type", BATCH_TYPES)
def test_accelerate_shard_wrapper_is_a_passthrough(batch_type):
    """transformers neutralises accelerate's BatchSamplerShard around a rank-aware sampler by setting
    num_processes=1; that only passes short/variable batches through unchanged because the sampler has
    no `batch_size` attribute."""
    from accelerate.data_loader import BatchSamplerShard

    sampler = make(batch_type, random_lengths(203), num_replicas=2, rank=1)
    wrapper = BatchSamplerShard(sampler, num_processes=2, process_index=1)
    wrapper.num_processes, wrapper.process_index = 1, 0
    assert not hasattr(sampler, "batch_size")
    assert list(wrapper) == list(sampler)
    assert len(wrapper) == len(sampler)


# ---- DataLoader and factory ------------------------------------------------------------------------


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("batch_type", BATCH_TYPES)
def test_inside_dataloader(batch_type, num_workers):
    lengths = random_lengths(200)
    sampler = make(batch_type, lengths, seed=1)
    loader = DataLoader(IndexDataset(200), batch_sampler=sampler, num_workers=num_workers)
    assert len(loader) == len(sampler)
    for epoch in range(2):
        sampler.set_epoch(epoch)
        got = [batch.tolist() for batch in loader]
        assert got == list(sampler)
        assert sorted(i for b in got for i in b) == list(range(200))


def test_build_batch_sampler_types_and_errors():
    lengths = random_lengths(50)
    assert type(build_batch_sampler("example", lengths, batch_size=4)) is ExampleBatchSampler
    assert type(build_batch_sampler("length", lengths, batch_size=4)) is LengthBatchSampler
    assert type(build_batch_sampler("token", lengths, batch_size=3000)) is TokenBatchSampler
    with pytest.raises(ValueError, match=r"unknown batch_type 'frames'.*\['example', 'length', 'token'\]"):
        build_batch_sampler("frames", lengths, batch_size=4)
    with pytest.raises(ValueError, match=r"needs batch_size \(the padded budget per batch\)"):
        build_batch_sampler("token", lengths)
    with pytest.raises(ValueError, match=r"needs batch_size \(examples per batch\)"):
        build_batch_sampler("example", lengths)
    with pytest.raises(ValueError, match="sort_size must be an integer"):
        build_batch_sampler("token", lengths, batch_size=100, sort_size=2.5)
    with pytest.raises(ValueError, match="lengths must be >= 0"):
        build_batch_sampler("example", [3, -1], batch_size=2)
    with pytest.raises(ValueError, match="rank must be"):
        build_batch_sampler("example", lengths, batch_size=2, num_replicas=2, rank=2)


def test_docstring_examples_hold():
    import doctest

    import funasr_nano_hf.data.samplers as samplers

    result = doctest.testmod(samplers, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_empty_and_tiny_inputs():
    assert list(build_batch_sampler("token", [], batch_size=10)) == []
    assert len(build_batch_sampler("length", [], batch_size=3)) == 0
    # fewer batches than ranks: every rank still gets one batch (padding repeats the only batch)
    samplers = [build_batch_sampler("example", [4, 5], batch_size=8, num_replicas=3, rank=r) for r in range(3)]
    per_rank = [list(s) for s in samplers]
    assert all(len(batches) == 1 and sorted(batches[0]) == [0, 1] for batches in per_rank)
    assert samplers[0].num_padding_batches == 2


# ---- two real processes ----------------------------------------------------------------------------


def _distributed_worker(rank: int, world_size: int, init_file: str, out_dir: str) -> None:
    """Each process builds the sampler with default num_replicas/rank, taken from the gloo process group."""
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        sampler = build_batch_sampler("token", random_lengths(777, seed=3), batch_size=5000, seed=21)
        sampler.set_epoch(1)
        assert (sampler.num_replicas, sampler.rank) == (world_size, rank)
        gathered: list = [None] * world_size
        torch.distributed.all_gather_object(gathered, list(sampler))
        if rank == 0:
            torch.save(gathered, Path(out_dir) / "batches.pt")
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_processes_get_disjoint_equal_shards(tmp_path):
    torch.multiprocessing.spawn(
        _distributed_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True
    )
    per_rank = torch.load(tmp_path / "batches.pt")
    samplers = [
        build_batch_sampler("token", random_lengths(777, seed=3), batch_size=5000, seed=21, num_replicas=2, rank=r)
        for r in range(2)
    ]
    for sampler in samplers:
        sampler.set_epoch(1)
    assert per_rank == [list(s) for s in samplers]  # same batches as two in-process instances
    assert len(per_rank[0]) == len(per_rank[1]) > 0
    counts = Counter(i for batches in per_rank for b in batches for i in b)
    assert set(counts) == set(range(777))
    if samplers[0].num_padding_batches == 0:
        assert max(counts.values()) == 1
