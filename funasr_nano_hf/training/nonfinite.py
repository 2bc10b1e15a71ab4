"""Non-finite (NaN / inf) loss or gradients: caught at the optimizer step, named with the step and the examples'
keys, then skipped or stopped on (``--on_nonfinite skip|stop``, default stop).

`NonFiniteGuard` is driven by `FunAsrNanoTrainer`: `record_loss` after each micro-batch's forward pass (no host
sync: the loss is kept as a tensor), `check_step` once per optimizer step, on the gradient norm the Trainer
computes at the accumulation boundary (after the GradScaler unscaled the gradients, so the norm is the true,
unscaled one). One host sync per optimizer step, none per micro-batch or per parameter; the parameter at fault is
looked up only when something is non-finite.

* ``stop``: `NonFiniteLossError` (logged first, so it lands in train.log) with the step, what was non-finite and
  the keys of the examples (of the micro-batches whose loss was non-finite, else of the whole step).
* ``skip``: the step gives no optimizer update: the gradients accumulated for it are dropped (``grad = None``:
  torch optimizers leave parameters without a gradient untouched, so no momentum, no weight decay); counted, each
  one logged (train.log) and the total reported at the end of training (`summary`, and
  ``nonfinite_skipped_batches`` in the log history). The LR schedule and the step counter move on as usual.

With a GradScaler (``--fp16``) the scaled gradients overflow on purpose (early, and each time the scaler tries a
larger scale); the scaler then skips that step and lowers its scale. Such an overflow -- non-finite gradients
from finite losses -- is the scaler's business, not a fault. A non-finite loss is a fault with or without it.

Several processes (DDP): the gradient norm is computed on the all-reduced gradients, so every rank reaches the same
verdict on it without a collective; only when it is non-finite do the ranks gather their keys and loss verdicts
(one `gather` on every rank, the same decision everywhere). DeepSpeed keeps the gradients inside its engine and
steps inside backward: there the loss is checked before backward (one sync per micro-batch) and only ``stop`` is
supported.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import NonFiniteLossError

logger = logging.getLogger(__name__)

POLICIES = ("stop", "skip")  # --on_nonfinite


@dataclass(frozen=True)
class SkippedBatch:
    """An optimizer step that gave no update (``skip``): its step, what was non-finite, its examples' keys."""

    step: int
    reason: str
    keys: tuple[str, ...]


@dataclass(frozen=True)
class _Verdict:
    """One rank's view of a step whose gradient norm was non-finite (what `gather` exchanges)."""

    loss_reason: str | None  # "non-finite loss (nan)" when one of its micro-batches had one
    bad_keys: tuple[str, ...]  # keys of those micro-batches
    step_keys: tuple[str, ...]  # keys of every micro-batch of the step


def nonfinite_gradients(model: torch.nn.Module) -> list[str]:
    """Names of the parameters whose gradient holds a NaN or inf (one device sync for all of them). Used only
    once a step's norm is non-finite, to name the culprit."""
    named = [(name, param.grad) for name, param in model.named_parameters() if param.grad is not None]
    if not named:
        return []
    finite = torch.stack([torch.isfinite(grad).all() for _, grad in named]).tolist()
    return [name for (name, _), ok in zip(named, finite) if not ok]


class NonFiniteGuard:
    """The per-step check for NaN / inf, kept apart from the trainer so its policy can be tested alone.

    A single bad example (an extreme-amplitude clip, a broken label) turns the loss non-finite; unchecked, it
    poisons the weights (and the optimizer's moments) for the rest of the run, and nothing says which example did
    it. This guard finds it at the step it happens, names the step and the batch's keys, and either stops the run
    (``policy="stop"``) or drops that step's update and counts it (``"skip"``). `distributed`: several processes
    train; `deepspeed`: the gradients live inside DeepSpeed's engine (the loss is checked before backward, only
    ``stop``); `grad_scaler`: a GradScaler handles gradient overflow (see the module docstring). `skipped` lists
    the skipped steps.
    """

    def __init__(
        self, policy: str = "stop", *, distributed: bool = False, deepspeed: bool = False, grad_scaler: bool = False
    ):
        if policy not in POLICIES:
            raise ValueError(f"on_nonfinite must be one of {POLICIES}, got {policy!r}")
        if policy == "skip" and deepspeed:
            raise ValueError(
                "--on_nonfinite skip is not supported with DeepSpeed (the gradients live inside its engine); "
                "use --on_nonfinite stop"
            )
        self.policy = policy
        self.distributed = distributed
        self.deepspeed = deepspeed
        self.grad_scaler = grad_scaler
        self.skipped: list[SkippedBatch] = []
        self._window: list[tuple[torch.Tensor, tuple[str, ...]]] = []  # (loss, keys) of this step's micro-batches

    def record_loss(self, loss: torch.Tensor, step: int, keys: Sequence[str]) -> None:
        """After a micro-batch's forward pass. Kept for `check_step` (no sync); under DeepSpeed checked now."""
        if self.deepspeed:
            if not bool(torch.isfinite(loss.detach()).all()):
                self._act(step, f"non-finite loss ({loss.detach().float().mean().item()})", keys)
            return
        self._window.append((loss.detach(), tuple(keys)))

    def check_step(
        self,
        model: torch.nn.Module,
        step: int,
        grad_norm: torch.Tensor | float | None = None,
        gather: Callable[[Any], list[Any]] | None = None,
    ) -> bool:
        """At the optimizer step, before it. `grad_norm`: the (unscaled) total gradient norm the Trainer computed
        (None: computed here). `gather(obj)`: every rank's `obj` (several processes). Returns True when the step
        was found non-finite and handled (``skip``: gradients dropped); raises on ``stop``."""
        window, self._window = self._window, []
        if self.deepspeed:
            return False
        if grad_norm is None:
            grads = [p.grad for p in model.parameters() if p.grad is not None]
            grad_norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros(())
        norm = torch.as_tensor(grad_norm, dtype=torch.float32)
        flags = [torch.isfinite(norm).reshape(1)]
        flags += [torch.isfinite(loss).all().reshape(1).to(norm.device) for loss, _ in window]
        finite = torch.cat([f.to(norm.device) for f in flags]).tolist()  # the one host sync of the step
        norm_ok, losses_ok = finite[0], finite[1:]
        bad = [(loss, keys) for (loss, keys), ok in zip(window, losses_ok) if not ok]
        if norm_ok:
            if bad:  # a non-finite loss whose gradients stayed finite: nothing reaches the weights
                logger.warning("non-finite loss at step %d on the examples %s (gradients finite)", step, bad[0][1])
            return False  # identical on every rank (all-reduced gradients): no collective needed
        verdict = _Verdict(
            loss_reason=f"non-finite loss ({bad[0][0].float().mean().item()})" if bad else None,
            bad_keys=tuple(key for _, keys in bad for key in keys),
            step_keys=tuple(key for _, keys in window for key in keys),
        )
        verdicts = gather(verdict) if self.distributed and gather is not None else [verdict]
        loss_reasons = [v.loss_reason for v in verdicts if v.loss_reason]
        if not loss_reasons and self.grad_scaler:
            return False  # the scaler's overflow: it skips this step and lowers its scale
        if loss_reasons:
            reason = loss_reasons[0] if verdict.loss_reason is None else verdict.loss_reason
            keys = [key for v in verdicts for key in v.bad_keys]
        else:
            named = nonfinite_gradients(model)
            reason = "non-finite gradient" + (
                f" in {named[0]}" + (f" and {len(named) - 1} more" if len(named) > 1 else "") if named else ""
            )
            keys = [key for v in verdicts for key in v.step_keys]
        for param in model.parameters():
            param.grad = None
        self._act(step, reason, keys)
        return True

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
