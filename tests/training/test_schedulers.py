"""`warmuplr` is FunASR's WarmupLR: the same learning rate at every optimizer update, also after a resume."""

from __future__ import annotations

import io

import pytest
import torch

from funasr_nano_hf.training.schedulers import get_warmuplr_schedule, warmuplr_factor


def _optimizer(lr: float = 1e-4) -> torch.optim.Optimizer:
    return torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=lr)


def _lrs(scheduler: torch.optim.lr_scheduler.LRScheduler, updates: int) -> list[float]:
    """The lr each of `updates` optimizer updates runs at (the scheduler steps after each, as both trainers do)."""
    lrs = []
    for _ in range(updates):
        lrs.append(scheduler.optimizer.param_groups[0]["lr"])
        scheduler.optimizer.step()
        scheduler.step()
    return lrs


@pytest.mark.parametrize("warmup_steps", [1, 3, 500, 25000])
def test_same_lr_as_funasr_warmuplr_at_every_update(warmup_steps):
    from funasr.schedulers import scheduler_classes

    theirs = _lrs(scheduler_classes["warmuplr"](_optimizer(), warmup_steps=warmup_steps), 3000)
    ours = _lrs(get_warmuplr_schedule(_optimizer(), warmup_steps), 3000)
    torch.testing.assert_close(torch.tensor(ours, dtype=torch.float64), torch.tensor(theirs, dtype=torch.float64))
    assert ours[0] == pytest.approx(1e-4 / warmup_steps)  # the first update already moves (HF's warm-ups start at 0)
    if warmup_steps <= 3000:
        assert max(ours) == pytest.approx(1e-4) and ours.index(max(ours)) == warmup_steps - 1


def test_formula():
    assert warmuplr_factor(250, 500) == 0.5
    assert warmuplr_factor(500, 500) == 1.0
    assert warmuplr_factor(2000, 500) == 0.5
    assert warmuplr_factor(1000, 500) == pytest.approx(2**-0.5)


def test_resumed_schedule_continues_where_it_stopped():
    """transformers saves the optimizer's and the scheduler's state dicts in each checkpoint and loads them into
    new ones on resume."""
    first = get_warmuplr_schedule(_optimizer(), 4)
    before = _lrs(first, 6)
    buffer = io.BytesIO()
    torch.save({"optimizer": first.optimizer.state_dict(), "scheduler": first.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=False)
    optimizer = _optimizer()
    resumed = get_warmuplr_schedule(optimizer, 4)
    optimizer.load_state_dict(saved["optimizer"])
    resumed.load_state_dict(saved["scheduler"])
    assert before + _lrs(resumed, 6) == _lrs(get_warmuplr_schedule(_optimizer(), 4), 12)


def test_no_warmup_is_refused_with_the_remedy():
    with pytest.raises(ValueError, match=r"--warmup_steps 0: .*--lr_scheduler_type constant"):
        get_warmuplr_schedule(_optimizer(), 0)
