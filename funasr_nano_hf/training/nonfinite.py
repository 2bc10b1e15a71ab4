"""Non-finite (NaN / inf) loss or gradients: caught at the step, named with the step and the examples' keys,
then skipped or stopped on (``--on_nonfinite skip|stop``, default stop).

`NonFiniteGuard` is driven by `FunAsrNanoTrainer`: `check_loss` right after the forward pass, before
backward; `check_gradients` right after backward.

* ``stop``: `NonFiniteLossError` (logged first, so it lands in train.log) with the step, what was
  non-finite and the keys of the batch's examples.
* ``skip``: the batch gives no optimizer update; it is counted, each one logged (train.log) and the total
  reported at the end of training (`summary`, and ``nonfinite_skipped_batches`` in the log history).

How a batch is skipped:

* One process: a non-finite loss skips backward for that batch (`SkipBatch`), so with gradient
  accumulation the window's other micro-batches still count. Non-finite gradients from a finite loss are
  found after backward; then the gradients accumulated for the current optimizer step are dropped
  (``grad = None``: torch optimizers leave parameters without a gradient untouched, so there is no update
  at all -- no momentum, no weight decay). The LR schedule and the step counter move on as usual.
* Several processes (DDP): every rank must join the gradient all-reduce, so backward always runs; the
  ranks agree on the verdict (one all-reduce of a flag per micro-batch) and all drop the step's
  gradients together; the message lists the keys gathered from every rank.
* DeepSpeed keeps the gradients inside its engine: only ``stop`` is supported there.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..errors import NonFiniteLossError

logger = logging.getLogger(__name__)

POLICIES = ("stop", "skip")  # --on_nonfinite


class SkipBatch(Exception):
    """Raised from the loss check to leave the training step before backward; carries the (detached) loss."""

    def __init__(self, loss: torch.Tensor):
        super().__init__("non-finite loss: batch skipped")
        self.loss = loss


@dataclass(frozen=True)
class SkippedBatch:
    """A batch that gave no optimizer update (``skip``): its step, what was non-finite, its examples' keys."""

    step: int
    reason: str
    keys: tuple[str, ...]


def nonfinite_gradients(model: torch.nn.Module) -> list[str]:
    """Names of the parameters whose gradient holds a NaN or inf (one device sync for all of them)."""
    named = [(name, param.grad) for name, param in model.named_parameters() if param.grad is not None]
    if not named:
        return []
    finite = torch.stack([torch.isfinite(grad).all() for _, grad in named]).tolist()
    return [name for (name, _), ok in zip(named, finite) if not ok]


class NonFiniteGuard:
    """The per-step check for NaN / inf, kept apart from the trainer so its policy can be tested alone.

    A single bad example (an extreme-amplitude clip, a broken label) turns the loss non-finite; unchecked,
    it poisons the weights (and the optimizer's moments) for the rest of the run, and nothing says which
    example did it. This guard finds it at the step it happens, names the step and the batch's keys, and
    either stops the run (``policy="stop"``) or drops that batch's update and counts it (``"skip"``; see
    the module docstring for how, with one or several processes). `distributed`: several processes train
    (the verdict is agreed on by all ranks); `deepspeed`: the gradients live inside DeepSpeed's engine, so
    only the loss is checked and only ``stop`` is allowed. `skipped` lists the skipped batches.
    """

    def __init__(self, policy: str = "stop", *, distributed: bool = False, deepspeed: bool = False):
        if policy not in POLICIES:
            raise ValueError(f"on_nonfinite must be one of {POLICIES}, got {policy!r}")
        if policy == "skip" and deepspeed:
            raise ValueError(
                "--on_nonfinite skip is not supported with DeepSpeed (the gradients live inside its engine); "
                "use --on_nonfinite stop"
            )
        self.policy = policy
        self.distributed = distributed
        self.check_grads = not deepspeed
        self.skipped: list[SkippedBatch] = []
        self._pending: str | None = None  # several processes: this rank's loss verdict, settled after backward

    def check_loss(self, loss: torch.Tensor, step: int, keys: Sequence[str]) -> None:
        """Before backward. One process: act now (raise `NonFiniteLossError` or `SkipBatch`)."""
        if bool(torch.isfinite(loss.detach()).all()):
            return
        reason = f"non-finite loss ({loss.detach().float().mean().item()})"
        if self.distributed:
            self._pending = reason
            return
        self._act(step, reason, keys)
        raise SkipBatch(loss.detach())

    def check_gradients(
        self,
        model: torch.nn.Module,
        step: int,
        keys: Sequence[str],
        agree: Callable[[bool], bool] | None = None,
        gather: Callable[[list[str]], list[str]] | None = None,
    ) -> None:
        """After backward. `agree(flag)` (any rank's flag) and `gather(keys)` are the collectives used when
        several processes train."""
        reason, self._pending = self._pending, None
        if reason is None and self.check_grads:
            bad = nonfinite_gradients(model)
            if bad:
                reason = f"non-finite gradient in {bad[0]}" + (f" and {len(bad) - 1} more" if len(bad) > 1 else "")
        if self.distributed:
            if not agree(reason is not None):
                return
            keys = gather(list(keys) if reason else [])
            reason = reason or "non-finite loss or gradient on another process"
        elif reason is None:
            return
        for param in model.parameters():
            param.grad = None
        self._act(step, reason, keys)

    def _act(self, step: int, reason: str, keys: Sequence[str]) -> None:
        where = f"{reason} at step {step} on the examples {list(keys)}"
        if self.policy == "stop":
            message = (
                f"{where}; training stopped (--on_nonfinite stop). Check those examples (e.g. audio with an "
                "extreme amplitude), lower the learning rate, or pass --on_nonfinite skip to skip such batches"
            )
            logger.error(message)
            raise NonFiniteLossError(message)
        self.skipped.append(SkippedBatch(step, reason, tuple(keys)))
        logger.warning(
            "%s: batch skipped, no optimizer update from it (--on_nonfinite skip; %d skipped so far)",
            where,
            len(self.skipped),
        )

    def summary(self) -> str | None:
        """One line for the end of training; None when nothing was skipped."""
        if not self.skipped:
            return None
        steps = [batch.step for batch in self.skipped]
        keys = sorted({key for batch in self.skipped for key in batch.keys})
        return (
            f"skipped {len(self.skipped)} batch(es) with a non-finite loss or gradient (--on_nonfinite skip) "
            f"at steps {steps}; their examples: {keys}"
        )
