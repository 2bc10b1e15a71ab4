"""`TrainerCallback`s that give the Hugging Face `Trainer` FunASR's trainer features, and the run's ``train.log``.

* `EpochEndValidationCallback` -- FunASR validates (and saves) every ``validate_interval`` steps AND at the end
  of every epoch (its ``model.pt.ep{E}``): this callback asks the Trainer for the epoch-end evaluation and
  checkpoint unless that step was already evaluated / saved.
* `EpochEarlyStoppingCallback` -- FunASR's ``early_stopping_patience``: stop after N EPOCHS whose epoch-end
  validation loss is not strictly below the best so far (evaluations inside an epoch do not count); 0 = off.
  Its state is saved with every checkpoint and restored on resume (FunASR restarts the count).
* `NBestCheckpointCallback` -- FunASR's ``keep_nbest_models`` / ``avg_nbest_model``: keep the n best
  checkpoints by a validation metric (CER by default; FunASR's ``avg_keep_nbest_models_type`` acc / loss via
  `NBEST_METRICS`), or -- without validation data -- the n newest; delete the rest, and at the end of training
  write the fp32 average of the best (newest) ones to ``<output_dir>/model_avg``. `averaging.average_checkpoints`
  does the averaging on its own (e.g. after the fact, on any checkpoint folders).
* `TrainLog` -- the run's ``train.log`` from its first line to its last error (tracebacks included), for
  the whole of ``examples/finetune.py``, not only ``trainer.train()``.
* `FileLoggerCallback` -- one readable line per Trainer log event in ``train.log`` (through `TrainLog`'s
  handler when one is open on the file, else its own while training).
* `CurvePlotCallback` -- training / validation loss and validation CER curves as a PNG.
* `LossExplosionCallback` -- a warning (train.log, final metrics) when the loss explodes or the gradient norm
  collapses to 0, so that such a run does not end "successfully" in silence.

Typical wiring (what ``examples/finetune.py`` does)::

    args = TrainingArguments(
        output_dir=out,
        eval_strategy="steps", save_strategy="steps",
        eval_steps=1000, save_steps=1000,                # FunASR validate_interval / save_checkpoint_interval
        save_total_limit=None,                           # let NBestCheckpointCallback prune (see below)
        metric_for_best_model="eval_cer", greater_is_better=False,
    )
    with TrainLog(os.path.join(out, "train.log")):
        callbacks = [
            FileLoggerCallback(os.path.join(out, "train.log")),
            CurvePlotCallback(),
            EpochEndValidationCallback(),
            NBestCheckpointCallback(keep_nbest_models=5, avg_nbest_model=3, metric="eval_cer"),
            EpochEarlyStoppingCallback(early_stopping_patience=3),   # epoch-end eval_loss, as FunASR
        ]
        ...

``save_total_limit``. The Trainer's own rotation keeps the *most recent* checkpoints (plus its best one)
and runs before the callbacks see the new checkpoint, so with a limit set it can delete checkpoints that
are among the n best by CER; `NBestCheckpointCallback` then simply ranks what is left (it never fails
on a missing folder). Recommended: ``save_total_limit=None`` and let the callback prune. Both together
work, but the effective set is the intersection of "recent" and "best".
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import re
import sys
import time
import traceback
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_callback import ExportableState
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .averaging import average_checkpoints
from .checkpointing import adopt_checkpoint, atomic_write_bytes, complete_checkpoints, remove_directory
from .secrets import redact_argv

logger = logging.getLogger(__name__)

__all__ = [
    "NBEST_METRICS",
    "CurvePlotCallback",
    "EpochEarlyStoppingCallback",
    "EpochEndValidationCallback",
    "FileLoggerCallback",
    "LossExplosionCallback",
    "NBestCheckpointCallback",
    "TrainLog",
]

# FunASR's ``avg_keep_nbest_models_type`` (acc | loss) plus ours, the error rates of greedy transcripts (cer:
# characters, the default; wer: words; mer: mixed CJK characters + other words, what "cer" meant before they
# were named apart): the evaluation metric the n best are ranked by, and whether higher is better.
NBEST_METRICS: dict[str, tuple[str, bool]] = {
    "cer": ("eval_cer", False),
    "wer": ("eval_wer", False),
    "mer": ("eval_mer", False),
    "acc": ("eval_acc", True),
    "loss": ("eval_loss", False),
}


def _write_json_atomic(path: Path, payload: Any) -> None:
    atomic_write_bytes(path, (json.dumps(payload, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))


# ----------------------------------------------------------------------------------------------------------
# n-best checkpoints
# ----------------------------------------------------------------------------------------------------------
class NBestCheckpointCallback(TrainerCallback):
    """Keep the `keep_nbest_models` best checkpoints by `metric`; average the `avg_nbest_model` best at the end.

    Scores come from ``state.log_history`` (the Trainer logs every evaluation with its ``step``; the log is
    restored on resume, so checkpoints of an earlier session keep their scores) and from `on_evaluate`.
    A checkpoint is scored by the evaluation at its own step. The Trainer evaluates, then saves
    ``checkpoint-<step>`` and calls `on_save`; pruning runs at both events, so either order works.

    ``metric=None`` ranks by recency (newest first): the rule without validation data, where FunASR 1.4.16
    cannot train at all. Then the newest `keep_nbest_models` checkpoints are kept and the newest
    `avg_nbest_model` averaged.

    Only complete checkpoints count (`checkpointing`: published with their completion marker; a plain
    Trainer's checkpoint gets the marker at `on_save`); torn ones are left alone. Deleting renames first, so a
    killed prune never leaves a half-deleted checkpoint that looks complete.

    Never deleted: the newest checkpoint (resume needs it), the Trainer's ``state.best_model_checkpoint``
    (``load_best_model_at_end`` needs it), checkpoints newer than the current step (not this run's), and
    unscored checkpoints until some later evaluation produced a score -- a misspelt `metric` therefore
    deletes nothing (it is warned about). Unscored checkpoints older than a scored one (e.g. with
    ``save_steps`` finer than ``eval_steps``) can never be ranked and are deleted.

    At `on_train_end` the best `avg_nbest_model` checkpoints are averaged (`average_checkpoints`) into
    ``output_dir/output_subdir`` (`averaged_dir`); ``output_dir/nbest.json`` lists the kept and averaged
    checkpoints. ``max(keep_nbest_models, avg_nbest_model)`` checkpoints are kept so the average has its inputs.
    ``keep_nbest_models=None`` (or <= 0) prunes nothing; ``avg_nbest_model=0`` skips the average.
    Everything runs on the world main process only. Failures of pruning or averaging are logged, not
    raised: they must not cost a finished training run.
    """

    def __init__(
        self,
        keep_nbest_models: int | None = 5,
        avg_nbest_model: int = 3,
        metric: str | None = "eval_cer",
        greater_is_better: bool = False,
        output_subdir: str = "model_avg",
    ):
        self.keep_nbest_models = keep_nbest_models
        self.avg_nbest_model = avg_nbest_model
        # the Trainer prefixes evaluation metrics with "eval_" (same convention as metric_for_best_model)
        self.metric = None if metric is None else metric if metric.startswith("eval_") else f"eval_{metric}"
        self.greater_is_better = greater_is_better
        self.output_subdir = output_subdir
        self._scores: dict[int, float] = {}
        self._training = False
        self._warned_missing = False
        self.averaged_dir: Path | None = None

    @property
    def ranked_by(self) -> str:
        """What the checkpoints are ranked by: the metric's name, or ``"recency"``."""
        return self.metric or "recency"

    # -- bookkeeping -------------------------------------------------------------------------------------
    def _collect_scores(self, state: TrainerState) -> dict[int, float]:
        """step -> metric; the first evaluation at a step wins (a later `trainer.evaluate()` at the same
        step, e.g. of the reloaded best model after training, describes a different model)."""
        scores: dict[int, float] = {}
        if self.metric is None:
            return scores
        for entry in state.log_history:
            if self.metric in entry and "step" in entry:
                scores.setdefault(int(entry["step"]), float(entry[self.metric]))
        for step, value in self._scores.items():
            scores.setdefault(step, value)
        return scores

    @staticmethod
    def _checkpoints(output_dir: str | os.PathLike, max_step: int) -> dict[int, Path]:
        """Complete ``checkpoint-<step>`` folders of this run (step <= current step); torn ones are neither
        ranked, averaged nor deleted."""
        return complete_checkpoints(output_dir, max_step)

    def _rank(self, scored: dict[int, float]) -> list[int]:
        """Steps, best first; NaN scores last, ties to the earlier step (FunASR's averaging takes the
        first-inserted of equal scores too)."""

        def key(step: int) -> tuple[bool, float, int]:
            value = scored[step]
            if math.isnan(value):
                return (True, 0.0, step)
            return (False, -value if self.greater_is_better else value, step)

        return sorted(scored, key=key)

    def _ranking(self, checkpoints: dict[int, Path], state: TrainerState) -> tuple[list[int], dict[int, float]]:
        """(ranked steps of the checkpoints that can be ranked, best first; every known score)."""
        if self.metric is None:
            return sorted(checkpoints, reverse=True), {}
        scores = self._collect_scores(state)
        return self._rank({step: scores[step] for step in checkpoints if step in scores}), scores

    def _entry(self, step: int, path: Path, scores: dict[int, float]) -> dict[str, Any]:
        return {"step": step, "metric": scores.get(step), "path": str(path.resolve())}

    def _write_summary(self, args: TrainingArguments, kept: list[dict], averaged: list[dict] | None) -> None:
        payload = {
            "metric": self.metric,
            "ranked_by": self.ranked_by,
            "greater_is_better": self.greater_is_better if self.metric else True,
            "keep_nbest_models": self.keep_nbest_models,
            "avg_nbest_model": self.avg_nbest_model,
            "kept": kept,
            "averaged": averaged or [],
            "average_dir": str(self.averaged_dir.resolve()) if averaged and self.averaged_dir else None,
        }
        _write_json_atomic(Path(args.output_dir) / "nbest.json", payload)

    def _prune(self, args: TrainingArguments, state: TrainerState) -> None:
        checkpoints = self._checkpoints(args.output_dir, state.global_step)
        if not checkpoints:
            return
        ranked, scores = self._ranking(checkpoints, state)
        newest = max(checkpoints)
        last_scored = max(scores) if scores else -1
        protected = {newest}
        if state.best_model_checkpoint:
            best = Path(state.best_model_checkpoint).resolve()
            protected |= {step for step, path in checkpoints.items() if path.resolve() == best}
        keep = self.keep_nbest_models
        if keep is None or keep <= 0:
            keep_steps = set(checkpoints)
        else:
            keep_steps = set(ranked[: max(keep, self.avg_nbest_model)]) | protected
            if self.metric is not None:
                # unscored and not yet overtaken by a later evaluation: its score may still come
                keep_steps |= {step for step in checkpoints if step not in scores and step >= last_scored}
        for step, path in sorted(checkpoints.items()):
            if step not in keep_steps:
                if self.metric is None:
                    logger.info("n-best: deleting %s (older than the %d newest)", path, len(keep_steps))
                else:
                    logger.info(
                        "n-best: deleting %s (%s=%s, outside the %d best)", path, self.metric, scores.get(step), keep
                    )
                remove_directory(path)
        order = ranked + sorted(step for step in keep_steps if step not in ranked)
        kept = [self._entry(step, checkpoints[step], scores) for step in order if step in keep_steps]
        self._write_summary(args, kept, None)

    def _safe_prune(self, args: TrainingArguments, state: TrainerState) -> None:
        try:
            self._prune(args, state)
        except Exception:  # noqa: BLE001 -- a pruning problem must not stop training
            logger.exception("n-best: pruning checkpoints in %s failed", args.output_dir)

    # -- Trainer events ----------------------------------------------------------------------------------
    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self._training = True
        self.averaged_dir = None
        if not state.is_world_process_zero:
            return
        if args.save_total_limit is not None and args.save_total_limit > 0:
            logger.warning(
                "NBestCheckpointCallback with save_total_limit=%s: the Trainer deletes older checkpoints by "
                "recency first, possibly some of the %s best by %s; prefer save_total_limit=None",
                args.save_total_limit,
                self.keep_nbest_models,
                self.ranked_by,
            )
        if args.eval_strategy == "no" and self.metric is not None:
            logger.warning("NBestCheckpointCallback: eval_strategy='no', checkpoints get no %s to rank by", self.metric)

    def on_evaluate(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        metrics: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        if not self._training or self.metric is None:
            return
        if metrics and self.metric in metrics:
            self._scores.setdefault(state.global_step, float(metrics[self.metric]))
        elif metrics is not None and not self._warned_missing and state.is_world_process_zero:
            self._warned_missing = True
            logger.warning(
                "NBestCheckpointCallback: %r is not among the evaluation metrics %s; checkpoints are not ranked",
                self.metric,
                sorted(metrics),
            )
        if state.is_world_process_zero:
            self._safe_prune(args, state)

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        if self._training and state.is_world_process_zero:
            self._adopt(args, state)
            self._safe_prune(args, state)

    @staticmethod
    def _adopt(args: TrainingArguments, state: TrainerState) -> None:
        """Only complete checkpoints (published with their completion marker) are ranked, averaged or deleted.
        `FunAsrNanoTrainer` publishes them so; a plain `Trainer` has finished writing the folder when it calls
        `on_save`, so it is marked complete here (`checkpointing.adopt_checkpoint`)."""
        adopt_checkpoint(Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self._training = False
        if not state.is_world_process_zero:
            return
        self._safe_prune(args, state)
        if self.avg_nbest_model <= 0:
            return
        try:
            checkpoints = self._checkpoints(args.output_dir, state.global_step)
            ranked, scores = self._ranking(checkpoints, state)
            chosen = ranked[: self.avg_nbest_model]
            if not chosen:
                logger.warning(
                    "n-best: no checkpoint ranked by %s in %s, nothing averaged", self.ranked_by, args.output_dir
                )
                return
            if len(chosen) < self.avg_nbest_model:
                logger.warning(
                    "n-best: only %d ranked checkpoint(s) to average (asked %d)", len(chosen), self.avg_nbest_model
                )
            out = Path(args.output_dir) / self.output_subdir
            self.averaged_dir = average_checkpoints([checkpoints[step] for step in chosen], out)
            logger.info(
                "n-best: averaged %s (by %s: %s) into %s",
                [checkpoints[step].name for step in chosen],
                self.ranked_by,
                [scores.get(step, step) for step in chosen],
                out,
            )
            remaining = self._checkpoints(args.output_dir, state.global_step)
            order = [step for step in ranked if step in remaining]
            order += sorted(step for step in remaining if step not in order)
            kept = [self._entry(step, remaining[step], scores) for step in order]
            averaged = [self._entry(step, checkpoints[step], scores) for step in chosen]
            self._write_summary(args, kept, averaged)
        except Exception:  # noqa: BLE001 -- the checkpoints are still there; average them by hand if needed
            logger.exception("n-best: averaging checkpoints in %s failed", args.output_dir)


# ----------------------------------------------------------------------------------------------------------
# epoch-end validation and early stopping counted in epochs
# ----------------------------------------------------------------------------------------------------------
def _trained_epoch(state: TrainerState) -> int:
    """The 1-based number of the epoch that just ended (a partial last epoch, cut by max_steps, counts)."""
    return max(1, math.ceil((state.epoch or 0) - 1e-6))


def _at_epoch_end(state: TrainerState) -> bool:
    """True at the update that ends an epoch: the Trainer sets ``state.epoch = epoch + (step + 1) / steps_in_epoch``,
    a whole number exactly at the epoch's last batch."""
    epoch = state.epoch or 0.0
    return epoch >= 1 and abs(epoch - round(epoch)) < 1e-9


def _evaluation_at(state: TrainerState, step: int) -> dict[str, Any] | None:
    """The first evaluation logged at `step` in this run's history (an entry with ``eval_*`` numbers)."""
    for entry in state.log_history:
        if entry.get("step") == step and any(key.startswith("eval_") for key in entry):
            return entry
    return None


class EpochEndValidationCallback(TrainerCallback):
    """Validate and save at every epoch end, as FunASR does besides its ``validate_interval`` validations.

    At the update that ends an epoch (`on_step_end`) the Trainer is asked to evaluate (when it evaluates at all:
    ``eval_strategy != "no"``) and to save (unless ``save_strategy`` is ``"no"`` or ``"best"``), in the same
    round as its own step-based evaluation and save: a step that is both an epoch end and a multiple of
    ``eval_steps``/``save_steps`` is evaluated and saved once (FunASR validates such weights twice under two
    names, with the same result), and the early stopping decision of that evaluation is in the checkpoint.
    `on_epoch_end` catches an epoch that ended otherwise (cut by ``max_steps``) and stops a second evaluation or
    save of the same step (``eval_strategy="epoch"``). The epoch-end checkpoint is ``checkpoint-<step>``
    (FunASR's ``model.pt.ep{E}``); its ``trainer_state.json`` has ``epoch == E``.
    """

    def __init__(self) -> None:
        self._evaluated: set[int] = set()
        self._saved: set[int] = set()

    def on_train_begin(self, args, state, control, **kwargs):
        self._evaluated.clear()
        self._saved.clear()

    def on_evaluate(self, args, state, control, **kwargs):
        self._evaluated.add(state.global_step)

    def on_save(self, args, state, control, **kwargs):
        self._saved.add(state.global_step)

    def _request(self, args: TrainingArguments, state: TrainerState, control: TrainerControl) -> None:
        step = state.global_step
        if args.eval_strategy != "no":
            control.should_evaluate = step not in self._evaluated
        if args.save_strategy not in ("no", "best"):
            control.should_save = step not in self._saved

    def on_step_end(self, args, state, control, **kwargs):
        if _at_epoch_end(state):
            self._request(args, state, control)
        return control

    def on_epoch_end(self, args, state, control, **kwargs):
        if state.global_step > 0:  # else no update in this epoch: nothing new to validate or save
            self._request(args, state, control)
        return control


class EpochEarlyStoppingCallback(TrainerCallback, ExportableState):
    """FunASR's ``early_stopping_patience`` (bin/train_ds.py): stop once `early_stopping_patience` EPOCHS in a
    row ended with a validation `metric` (default ``eval_loss``, lower is better) that is not strictly better
    than the best epoch-end value so far. Only the epoch-end validation counts (`EpochEndValidationCallback`
    provides it); the validations every ``eval_steps`` do not. A NaN (or missing) value counts as "no
    improvement", as in FunASR. ``early_stopping_patience=0`` turns it off (the values are still tracked and
    logged).

    Unlike transformers' ``EarlyStoppingCallback`` (which counts evaluations and needs
    ``load_best_model_at_end``) it needs nothing else. Unlike FunASR, whose count restarts with every run, the
    count is saved with each checkpoint (``trainer_state.json``, ``stateful_callbacks``) and restored when
    training resumes. When it stops, the stopping epoch's checkpoint is still written (FunASR breaks out of its
    loop before that save).
    """

    def __init__(self, early_stopping_patience: int = 0, metric: str = "eval_loss", greater_is_better: bool = False):
        if early_stopping_patience < 0:
            raise ValueError(f"early_stopping_patience must be >= 0 (0 = off), got {early_stopping_patience}")
        self.early_stopping_patience = early_stopping_patience
        self.metric = metric if metric.startswith("eval_") else f"eval_{metric}"
        self.greater_is_better = greater_is_better
        self.best: float | None = None
        self.epochs_no_improve = 0
        self.history: list[dict[str, Any]] = []  # one entry per epoch end: epoch, step, value
        self._training = False
        self._pending = False

    # -- ExportableState: saved in trainer_state.json with each checkpoint ----------------------------------
    def state(self) -> dict[str, Any]:
        return {
            "args": {
                "early_stopping_patience": self.early_stopping_patience,
                "metric": self.metric,
                "greater_is_better": self.greater_is_better,
            },
            "attributes": {
                "best": self.best,
                "epochs_no_improve": self.epochs_no_improve,
                "history": list(self.history),
            },
        }

    def on_train_begin(self, args, state, control, **kwargs):
        """Restore the count saved with the checkpoint this run resumed from (none for a fresh run)."""
        self._training, self._pending = True, False
        name = type(self).__name__
        saved = (state.stateful_callbacks or {}).get(name)
        if isinstance(saved, list):
            saved = saved[0] if saved else None
        attributes = (saved or {}).get("attributes") or {}
        self.best = attributes.get("best")
        self.epochs_no_improve = int(attributes.get("epochs_no_improve", 0))
        self.history = list(attributes.get("history", []))
        if self.history:
            logger.info(
                "early stopping: resumed after epoch %d, best %s %s, %d epoch(s) without improvement",
                self.history[-1]["epoch"],
                self.metric,
                self.best,
                self.epochs_no_improve,
            )
        # the Trainer writes every ExportableState callback's state under its name at each save: a checkpoint
        # written without this callback has no entry for it yet
        state.stateful_callbacks[name] = self.state()
        return control

    def _counted(self, step: int) -> bool:
        return bool(self.history) and self.history[-1]["step"] == step

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        """The evaluation at an epoch's last update (before that step's checkpoint is written), or the one
        `on_epoch_end` waits for."""
        if not self._training:
            return control
        if self._pending or (_at_epoch_end(state) and not self._counted(state.global_step)):
            self._pending = False
            self._epoch_ended(metrics or {}, state, control)
        return control

    def on_epoch_end(self, args, state, control, **kwargs):
        """An epoch that did not end on a whole ``state.epoch`` (cut by max_steps): its evaluation, logged already
        or still to come (`EpochEndValidationCallback` asks for it)."""
        if args.eval_strategy == "no" or self._counted(state.global_step) or state.global_step == 0:
            return control
        entry = _evaluation_at(state, state.global_step)
        if entry is not None:
            self._epoch_ended(entry, state, control)
        else:
            self._pending = True
        return control

    def on_train_end(self, args, state, control, **kwargs):
        self._training = self._pending = False
        return control

    def _epoch_ended(self, metrics: dict[str, Any], state: TrainerState, control: TrainerControl) -> None:
        value = metrics.get(self.metric)
        if value is None:
            logger.warning(
                "early stopping: %r is not among the evaluation metrics %s; the epoch counts as not improving",
                self.metric,
                sorted(key for key in metrics if key.startswith("eval_")),
            )
            value = math.nan
        value = float(value)
        improved = math.isfinite(value) and (
            self.best is None or (value > self.best if self.greater_is_better else value < self.best)
        )
        if improved:
            self.best, self.epochs_no_improve = value, 0
        else:
            self.epochs_no_improve += 1
        epoch = _trained_epoch(state)
        self.history.append(
            {"epoch": epoch, "step": state.global_step, "value": value if math.isfinite(value) else None}
        )
        if state.is_world_process_zero:
            logger.info(
                "epoch %d (step %d): %s %.6g, best %s, %d epoch(s) without improvement (patience %d)",
                epoch,
                state.global_step,
                self.metric,
                value,
                f"{self.best:.6g}" if self.best is not None else None,
                self.epochs_no_improve,
                self.early_stopping_patience,
            )
        if 0 < self.early_stopping_patience <= self.epochs_no_improve:
            control.should_training_stop = True
            if state.is_world_process_zero:
                logger.info(
                    "early stopping after epoch %d: %s has not improved for %d epoch(s) (best %.6g)",
                    epoch,
                    self.metric,
                    self.epochs_no_improve,
                    self.best if self.best is not None else math.nan,
                )


# ----------------------------------------------------------------------------------------------------------
# train.log
# ----------------------------------------------------------------------------------------------------------
def _format_value(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return str(value)
    return f"{value:.6g}"


_LOG_FORMAT = logging.Formatter("%(asctime)s | %(levelname)s | %(name)s | %(message)s", "%Y-%m-%d %H:%M:%S")


def _file_handler_for(path: Path, logger_names: Iterable[str]) -> logging.FileHandler | None:
    """A `logging.FileHandler` writing `path` already attached to one of `logger_names` (or the root logger)."""
    target = os.path.abspath(path)
    for name in ("", *logger_names):
        for handler in logging.getLogger(name or None).handlers:
            if isinstance(handler, logging.FileHandler) and handler.baseFilename == target:
                return handler
    return None


class TrainLog:
    """The run's ``train.log``, from its first line to its last error (FunASR's guide: "if an error happens,
    look at train.log"), as a context manager around the whole run -- data loading, model building, training,
    saving -- not only ``trainer.train()``.

    On the main process (`main_process`) a `logging.FileHandler` (append mode: a resumed run continues the
    file) is attached to the root logger and to the ``transformers`` logger (which does not propagate), so
    every record that passes the loggers' levels lands in the file; `FileLoggerCallback` writes its metric
    lines through the same handler. An exception leaving the block is written to the file with its traceback
    (on every process, each naming its rank) and re-raised; the console gets it from Python as usual.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        main_process: bool = True,
        rank: int = 0,
        loggers: Iterable[str] = ("", "transformers"),
        level: int = logging.INFO,
    ):
        self.path = Path(path)
        self.main_process = main_process
        self.rank = rank
        self.logger_names = tuple(loggers)
        self.level = level
        self.handler: logging.FileHandler | None = None

    def __enter__(self) -> TrainLog:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.main_process:
            handler = logging.FileHandler(self.path, mode="a", encoding="utf-8")
            handler.setLevel(self.level)
            handler.setFormatter(_LOG_FORMAT)
            for name in self.logger_names:
                logging.getLogger(name or None).addHandler(handler)
            self.handler = handler
            logging.getLogger(__name__).info("run started: %s", " ".join(redact_argv(sys.argv)))
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> bool:
        try:
            if error is not None and not (isinstance(error, SystemExit) and error.code in (0, None)):
                self.write_exception(kind, error, trace)
        finally:
            self.close()
        return False

    def write_exception(self, kind: type[BaseException], error: BaseException, trace: TracebackType | None) -> None:
        """The error and its traceback, in the file only (the console shows Python's own report)."""
        what = "interrupted" if isinstance(error, KeyboardInterrupt) else "failed"
        text = "".join(traceback.format_exception(kind, error, trace)).rstrip()
        summary = f"{type(error).__name__}: {(str(error).splitlines() or [''])[0]}"
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} | ERROR | rank {self.rank} | run {what}: {summary}\n{text}\n"
        if self.handler is not None:
            self.handler.acquire()
            try:
                self.handler.stream.write(line)
                self.handler.flush()
            finally:
                self.handler.release()
        else:  # another rank: append its error to the main process's file
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(line)

    def close(self) -> None:
        """Detach and close the handler (idempotent)."""
        if self.handler is None:
            return
        for name in self.logger_names:
            logging.getLogger(name or None).removeHandler(self.handler)
        self.handler.close()
        self.handler = None


class FileLoggerCallback(TrainerCallback):
    """Append one readable line per Trainer log event to ``train.log`` (FunASR keeps such a file).

    Line format (values with 6 significant digits)::

        2025-01-31 12:00:00 | step 50 | epoch 0.50 | loss 0.123456 | grad_norm 1.2 | learning_rate 5e-05

    When a `TrainLog` (or any `logging.FileHandler` on the same file) is attached to the root logger or to
    `loggers`, the lines go through that handler and it is left alone. Otherwise, while training, a handler
    of its own on the file is attached to `loggers` (default the ``transformers`` and ``funasr_nano_hf``
    hierarchies), so their records that pass the loggers' levels -- warnings at least -- land in the file too::

        2025-01-31 12:00:00 | WARNING | transformers.trainer | ...

    and is detached at the end of training; log events after that (e.g. a final ``trainer.evaluate()``) are
    still appended. `path` defaults to ``<output_dir>/train.log``. World main process only; every line is
    flushed.
    """

    def __init__(
        self,
        path: str | os.PathLike | None = None,
        loggers: Iterable[str] = ("transformers", "funasr_nano_hf"),
        level: int = logging.INFO,
    ):
        self.path = Path(path) if path is not None else None
        self.logger_names = tuple(loggers)
        self.level = level
        self._handler: logging.FileHandler | None = None
        self._owned = False

    def _resolve(self, args: TrainingArguments) -> Path:
        path = self.path if self.path is not None else Path(args.output_dir) / "train.log"
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def _attach(self, path: Path) -> None:
        self.close()
        shared = _file_handler_for(path, self.logger_names)
        if shared is not None:  # a TrainLog owns the file: write through it, leave it attached
            self._handler, self._owned = shared, False
            return
        handler = logging.FileHandler(path, mode="a", encoding="utf-8")
        handler.setLevel(self.level)
        handler.setFormatter(_LOG_FORMAT)
        for name in self.logger_names:
            logging.getLogger(name).addHandler(handler)
        self._handler, self._owned = handler, True

    def close(self) -> None:
        """Detach and close the file handler it owns (idempotent); a shared one is only let go."""
        if self._handler is None:
            return
        if self._owned:
            for name in self.logger_names:
                logging.getLogger(name).removeHandler(self._handler)
            self._handler.close()
        self._handler, self._owned = None, False

    @staticmethod
    def format_line(state: TrainerState, logs: dict[str, Any]) -> str:
        """The line written for one log event (public so that readers/tests can share the format)."""
        parts = [time.strftime("%Y-%m-%d %H:%M:%S"), f"step {state.global_step}"]
        if state.epoch is not None:
            parts.append(f"epoch {state.epoch:.2f}")
        parts += [f"{key} {_format_value(value)}" for key, value in logs.items() if key not in ("epoch", "step")]
        return " | ".join(parts)

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if state.is_world_process_zero:
            self._attach(self._resolve(args))

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if not state.is_world_process_zero or logs is None:
            return
        line = self.format_line(state, logs) + "\n"
        path = self._resolve(args)
        handler = self._handler or _file_handler_for(path, self.logger_names)  # after training: a TrainLog's
        if handler is not None and handler.stream is not None:
            # through the handler's own stream: no interleaving with the log records
            handler.acquire()
            try:
                handler.stream.write(line)
                handler.flush()
            finally:
                handler.release()
        else:
            with open(path, "a", encoding="utf-8") as handle:
                handle.write(line)

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self.close()


# ----------------------------------------------------------------------------------------------------------
# curves.png
# ----------------------------------------------------------------------------------------------------------
_EVAL_LOSS_RE = re.compile(r"^eval(_.+)?_loss$")
_EVAL_CER_RE = re.compile(r"^eval(_.+)?_cer$")


def _series(log_history: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    points = [(int(e["step"]), float(e[key])) for e in log_history if key in e and "step" in e]
    return [s for s, _ in points], [v for _, v in points]


class CurvePlotCallback(TrainerCallback):
    """Save training/eval loss and eval CER vs step as a PNG after every evaluation and at the end.

    Drawn from ``state.log_history`` (so a resumed run plots its whole history): training ``loss``, every
    ``eval[_<name>]_loss`` on the top axes, every ``eval[_<name>]_cer`` on a second one when present.
    `filename` is relative to ``args.output_dir`` unless absolute. Uses matplotlib's Agg canvas without
    pyplot (no global state, no display). World main process only; a plotting failure is logged.
    """

    def __init__(self, filename: str | os.PathLike = "curves.png"):
        self.filename = Path(filename)

    def path(self, args: TrainingArguments) -> Path:
        """Where the PNG goes for these arguments."""
        return self.filename if self.filename.is_absolute() else Path(args.output_dir) / self.filename

    def plot(self, log_history: list[dict[str, Any]], path: str | os.PathLike) -> Path | None:
        """Write the figure for `log_history` to `path` (atomically); None when there is nothing to plot."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        keys = {key for entry in log_history for key in entry}
        loss_keys = (["loss"] if "loss" in keys else []) + sorted(k for k in keys if _EVAL_LOSS_RE.match(k))
        cer_keys = sorted(k for k in keys if _EVAL_CER_RE.match(k))
        if not loss_keys and not cer_keys:
            return None
        rows = int(bool(loss_keys)) + int(bool(cer_keys))
        figure = Figure(figsize=(8, 3.2 * rows), dpi=100)
        FigureCanvasAgg(figure)
        axes = figure.subplots(rows, 1, sharex=True, squeeze=False)[:, 0]
        row = 0
        if loss_keys:
            for key in loss_keys:
                steps, values = _series(log_history, key)
                style = {"linewidth": 1.0} if key == "loss" else {"marker": "o", "markersize": 3}
                axes[row].plot(steps, values, label=key, **style)
            axes[row].set_ylabel("loss")
            axes[row].legend(loc="best")
            axes[row].grid(True, alpha=0.3)
            row += 1
        if cer_keys:
            for key in cer_keys:
                steps, values = _series(log_history, key)
                axes[row].plot(steps, values, marker="o", markersize=3, label=key)
            axes[row].set_ylabel("CER")
            axes[row].legend(loc="best")
            axes[row].grid(True, alpha=0.3)
        axes[-1].set_xlabel("step")
        figure.tight_layout()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        image = io.BytesIO()
        figure.savefig(image, format="png")
        atomic_write_bytes(path, image.getvalue())
        return path

    def _save(self, args: TrainingArguments, state: TrainerState) -> None:
        if not state.is_world_process_zero:
            return
        try:
            self.plot(state.log_history, self.path(args))
        except Exception:  # noqa: BLE001 -- a plot must not stop training
            logger.exception("curve plot %s failed", self.path(args))

    def on_evaluate(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        self._save(args, state)

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self._save(args, state)


class LossExplosionCallback(TrainerCallback):
    """A run whose loss explodes (a learning rate far too high: ``--lr 1e6``) or whose gradients vanish must not
    end "successfully" in silence. Watches the logged ``loss`` and ``grad_norm``: a warning (in train.log) when
    the loss rises above `factor` x the lowest loss so far (at least `floor`, so that a loss near zero does not
    make noise a rise), and when the gradient norm collapses to 0 after having been positive; the counts and the
    first step of each end up in the final metrics (`metrics`). Non-finite values are `nonfinite.py`'s business.
    Hand-written: transformers has no such watch. Not restored on resume (it watches the steps it sees)."""

    def __init__(self, factor: float = 10.0, floor: float = 0.1, zero_grad_norm: float = 1e-12):
        self.factor = factor
        self.floor = floor
        self.zero_grad_norm = zero_grad_norm
        self.lowest: float | None = None
        self.grad_seen = False
        self.exploded: list[int] = []  # steps whose loss was above the limit
        self.collapsed: list[int] = []  # steps whose grad norm was 0 after positive ones

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        loss, grad_norm = logs.get("loss"), logs.get("grad_norm")
        step = state.global_step
        if isinstance(loss, (int, float)) and math.isfinite(loss):
            if self.lowest is not None and loss > self.factor * max(self.lowest, self.floor):
                if not self.exploded:
                    logger.warning(
                        "loss explosion at step %d: loss %.4g is over %g x the lowest so far (%.4g); the learning "
                        "rate is likely far too high (--lr %g): this run's weights are probably ruined",
                        step,
                        loss,
                        self.factor,
                        self.lowest,
                        args.learning_rate,
                    )
                self.exploded.append(step)
            self.lowest = loss if self.lowest is None else min(self.lowest, loss)
        if isinstance(grad_norm, (int, float)) and math.isfinite(grad_norm):
            if grad_norm <= self.zero_grad_norm and self.grad_seen:
                if not self.collapsed:
                    logger.warning(
                        "gradient norm collapsed to 0 at step %d (it was positive before): the model no longer "
                        "learns (saturated or dead activations; a learning rate far too high?)",
                        step,
                    )
                self.collapsed.append(step)
            self.grad_seen = self.grad_seen or grad_norm > self.zero_grad_norm

    def on_train_end(self, args, state, control, **kwargs):
        if self.exploded or self.collapsed:
            logger.warning("training ended, but %s", self.summary())

    def summary(self) -> str:
        """One line naming what went wrong ("" when nothing did)."""
        parts = []
        if self.exploded:
            parts.append(f"the loss exploded at {len(self.exploded)} logged step(s) (first: step {self.exploded[0]})")
        if self.collapsed:
            parts.append(
                f"the gradient norm was 0 at {len(self.collapsed)} logged step(s) (first: step {self.collapsed[0]})"
            )
        return "; ".join(parts)

    def metrics(self) -> dict[str, int]:
        """For the final metrics (all_results.json): the counts and first steps, only when something happened."""
        out = {}
        if self.exploded:
            out.update(train_loss_explosion_steps=len(self.exploded), train_loss_explosion_first_step=self.exploded[0])
        if self.collapsed:
            out.update(
                train_zero_grad_norm_steps=len(self.collapsed), train_zero_grad_norm_first_step=self.collapsed[0]
            )
        return out
