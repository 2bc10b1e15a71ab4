"""FunASR's learning-rate schedule ``warmuplr`` for the Hugging Face Trainer.

FunASR (``funasr/schedulers/warmup_lr.py``, the trainer's default ``scheduler: warmuplr``) steps its
scheduler once per optimizer update, and the n-th update (1-based) runs at

    lr_n = base_lr * min(n / w, sqrt(w / n)),    w = warmup_steps

a linear rise to ``base_lr`` at update w, then a 1/sqrt(n) decay with no floor and no end (so the run length
does not change it). transformers' ``inverse_sqrt`` is the same curve one update late (its first update runs
at lr 0), hence this schedule of our own, as a `LambdaLR` the Trainer saves and resumes like its own.
"""

from __future__ import annotations

import math
from functools import partial

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

WARMUPLR = "warmuplr"  # FunASR's name; the default of `FunAsrNanoTrainer` and of finetune.py's --scheduler
HF_SCHEDULER = "hf"  # transformers' scheduler of TrainingArguments.lr_scheduler_type
SCHEDULERS = (WARMUPLR, HF_SCHEDULER)


def warmuplr_factor(update: int, warmup_steps: int) -> float:
    """The lr multiplier of the `update`-th optimizer update (1-based): min(n / w, sqrt(w / n))."""
    return min(update / warmup_steps, math.sqrt(warmup_steps / update))


def _warmuplr_lambda(completed_updates: int, warmup_steps: int) -> float:
    # LambdaLR asks for the factor after `completed_updates` scheduler steps, i.e. for update completed + 1.
    return warmuplr_factor(completed_updates + 1, warmup_steps)


def get_warmuplr_schedule(optimizer: Optimizer, warmup_steps: int, last_epoch: int = -1) -> LambdaLR:
    """FunASR's ``WarmupLR(optimizer, warmup_steps)`` as a `LambdaLR` (the lambda is a `partial` of a module
    function, so the scheduler's state dict saves and loads like transformers' own)."""
    if warmup_steps < 1:
        raise ValueError(
            f"--warmup_steps {warmup_steps}: FunASR's warmuplr divides by the warm-up length, which must be at "
            "least 1 optimizer update; for no warm-up use --lr_scheduler_type constant (transformers' schedule)"
        )
    return LambdaLR(optimizer, partial(_warmuplr_lambda, warmup_steps=int(warmup_steps)), last_epoch)
