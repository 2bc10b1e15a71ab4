"""`TrainerCallback`s that give the Hugging Face `Trainer` FunASR's trainer features.

* `NBestCheckpointCallback` -- FunASR's `keep_nbest_models` / `avg_nbest_model`: keep the n best
  checkpoints by a validation metric (CER by default), delete the rest, and at the end of training write
  the fp32 average of the best ones to ``<output_dir>/model_avg`` (a loadable model or adapter folder).
  `averaging.average_checkpoints` does the averaging on its own (e.g. after the fact, on any checkpoint
  folders).
* `FileLoggerCallback` -- FunASR's ``train.log``: one readable line per Trainer log event, plus the
  warnings of the ``transformers`` and ``funasr_nano_hf`` loggers.
* `CurvePlotCallback` -- training / validation loss and validation CER curves as a PNG.
* `EarlyStoppingCallback` -- re-exported from transformers, not reimplemented.

Typical wiring (what ``examples/finetune.py`` does)::

    args = TrainingArguments(
        output_dir=out,
        eval_strategy="steps", save_strategy="steps",    # aligned: every evaluation has its checkpoint
        eval_steps=1000, save_steps=1000,                # FunASR validate_interval / save_checkpoint_interval
        save_total_limit=None,                           # let NBestCheckpointCallback prune (see below)
        load_best_model_at_end=True,                     # needed by EarlyStoppingCallback
        metric_for_best_model="eval_cer", greater_is_better=False,
    )
    callbacks = [
        FileLoggerCallback(os.path.join(out, "train.log")),
        CurvePlotCallback(),
        NBestCheckpointCallback(keep_nbest_models=5, avg_nbest_model=3, metric="eval_cer"),
        EarlyStoppingCallback(early_stopping_patience=3),
    ]

Early stopping. FunASR's ``early_stopping_patience = N`` (stop after N validations without a CER
improvement) is transformers' ``EarlyStoppingCallback(early_stopping_patience=N)``. That callback reads
the Trainer's notion of "best", so it needs ``metric_for_best_model`` (``"eval_cer"``, with
``greater_is_better=False``), an evaluation strategy other than ``"no"``, and -- as transformers asks --
``load_best_model_at_end=True``, which in turn requires ``save_strategy`` to match ``eval_strategy``
(and ``save_steps`` to be a multiple of ``eval_steps``). ``early_stopping_threshold`` is the minimum
improvement that counts (FunASR has none: leave it 0).

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
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from transformers import EarlyStoppingCallback, TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .averaging import average_checkpoints
from .checkpointing import adopt_checkpoint, atomic_write_bytes, complete_checkpoints, remove_directory

logger = logging.getLogger(__name__)

__all__ = [
    "NBestCheckpointCallback",
    "FileLoggerCallback",
    "CurvePlotCallback",
    "EarlyStoppingCallback",
]


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

    Only complete checkpoints count (`checkpointing`: published with their completion marker; a plain
    Trainer's checkpoint gets the marker at `on_save`); torn ones are left alone. Deleting renames first, so a
    killed prune never leaves a half-deleted checkpoint that looks complete.

    Never deleted: the newest checkpoint (resume needs it), the Trainer's ``state.best_model_checkpoint``
    (``load_best_model_at_end`` needs it), checkpoints newer than the current step (not this run's), and
    unscored checkpoints until some later evaluation produced a score -- a misspelt `metric` therefore
    deletes nothing (it is warned about). Unscored checkpoints older than a scored one (e.g. with
    ``save_steps`` finer than ``eval_steps``) can never be ranked and are deleted.

    At `on_train_end` the best `avg_nbest_model` checkpoints are averaged (`average_checkpoints`) into
    ``output_dir/output_subdir``; ``output_dir/nbest.json`` lists the kept and averaged checkpoints.
    ``max(keep_nbest_models, avg_nbest_model)`` checkpoints are kept so the average has its inputs.
    ``keep_nbest_models=None`` (or <= 0) prunes nothing; ``avg_nbest_model=0`` skips the average.
    Everything runs on the world main process only. Failures of pruning or averaging are logged, not
    raised: they must not cost a finished training run.
    """

    def __init__(
        self,
        keep_nbest_models: int | None = 5,
        avg_nbest_model: int = 3,
        metric: str = "eval_cer",
        greater_is_better: bool = False,
        output_subdir: str = "model_avg",
    ):
        self.keep_nbest_models = keep_nbest_models
        self.avg_nbest_model = avg_nbest_model
        # the Trainer prefixes evaluation metrics with "eval_" (same convention as metric_for_best_model)
        self.metric = metric if metric.startswith("eval_") else f"eval_{metric}"
        self.greater_is_better = greater_is_better
        self.output_subdir = output_subdir
        self._scores: dict[int, float] = {}
        self._training = False
        self._warned_missing = False
        self.averaged_dir: Path | None = None

    # -- bookkeeping -------------------------------------------------------------------------------------
    def _collect_scores(self, state: TrainerState) -> dict[int, float]:
        """step -> metric; the first evaluation at a step wins (a later `trainer.evaluate()` at the same
        step, e.g. of the reloaded best model after training, describes a different model)."""
        scores: dict[int, float] = {}
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
        """Steps, best first; NaN scores last, ties to the earlier step."""

        def key(step: int) -> tuple[bool, float, int]:
            value = scored[step]
            if math.isnan(value):
                return (True, 0.0, step)
            return (False, -value if self.greater_is_better else value, step)

        return sorted(scored, key=key)

    def _entry(self, step: int, path: Path, scores: dict[int, float]) -> dict[str, Any]:
        return {"step": step, "metric": scores.get(step), "path": str(path.resolve())}

    def _write_summary(self, args: TrainingArguments, kept: list[dict], averaged: list[dict] | None) -> None:
        payload = {
            "metric": self.metric,
            "greater_is_better": self.greater_is_better,
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
        scores = self._collect_scores(state)
        scored = {step: scores[step] for step in checkpoints if step in scores}
        ranked = self._rank(scored)
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
            # unscored and not yet overtaken by a later evaluation: its score may still come
            keep_steps |= {step for step in checkpoints if step not in scored and step >= last_scored}
        for step, path in sorted(checkpoints.items()):
            if step not in keep_steps:
                logger.info(
                    "n-best: deleting %s (%s=%s, outside the %d best)", path, self.metric, scores.get(step), keep
                )
                remove_directory(path)
        order = ranked + sorted(step for step in keep_steps if step not in scored)
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
                self.metric,
            )
        if args.eval_strategy == "no":
            logger.warning("NBestCheckpointCallback: eval_strategy='no', checkpoints get no %s to rank by", self.metric)

    def on_evaluate(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        metrics: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        if not self._training:
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
            scores = self._collect_scores(state)
            ranked = self._rank({step: scores[step] for step in checkpoints if step in scores})
            chosen = ranked[: self.avg_nbest_model]
            if not chosen:
                logger.warning(
                    "n-best: no checkpoint scored by %s in %s, nothing averaged", self.metric, args.output_dir
                )
                return
            if len(chosen) < self.avg_nbest_model:
                logger.warning(
                    "n-best: only %d scored checkpoint(s) to average (asked %d)", len(chosen), self.avg_nbest_model
                )
            out = Path(args.output_dir) / self.output_subdir
            self.averaged_dir = average_checkpoints([checkpoints[step] for step in chosen], out)
            logger.info(
                "n-best: averaged %s (%s %s) into %s",
                [checkpoints[step].name for step in chosen],
                self.metric,
                [scores[step] for step in chosen],
                out,
            )
            remaining = self._checkpoints(args.output_dir, state.global_step)
            order = ranked + sorted(step for step in remaining if step not in scores)
            kept = [self._entry(step, remaining[step], scores) for step in order if step in remaining]
            averaged = [self._entry(step, checkpoints[step], scores) for step in chosen]
            self._write_summary(args, kept, averaged)
        except Exception:  # noqa: BLE001 -- the checkpoints are still there; average them by hand if needed
            logger.exception("n-best: averaging checkpoints in %s failed", args.output_dir)


# ----------------------------------------------------------------------------------------------------------
# train.log
# ----------------------------------------------------------------------------------------------------------
def _format_value(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return str(value)
    return f"{value:.6g}"


class FileLoggerCallback(TrainerCallback):
    """Append one readable line per Trainer log event to ``train.log`` (FunASR keeps such a file).

    Line format (values with 6 significant digits)::

        2025-01-31 12:00:00 | step 50 | epoch 0.50 | loss 0.123456 | grad_norm 1.2 | learning_rate 5e-05

    While training, a `logging.FileHandler` on the same file is attached to `loggers` (default the
    ``transformers`` and ``funasr_nano_hf`` hierarchies), so their records that pass the loggers' levels
    -- warnings at least -- land in the file too::

        2025-01-31 12:00:00 | WARNING | transformers.trainer | ...

    The handler is detached at the end of training; log events after that (e.g. a final
    ``trainer.evaluate()``) are still appended. `path` defaults to ``<output_dir>/train.log``.
    World main process only; every line is flushed.
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

    def _resolve(self, args: TrainingArguments) -> Path:
        path = self.path if self.path is not None else Path(args.output_dir) / "train.log"
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def _attach(self, path: Path) -> None:
        self.close()
        handler = logging.FileHandler(path, mode="a", encoding="utf-8")
        handler.setLevel(self.level)
        handler.setFormatter(
            logging.Formatter("%(asctime)s | %(levelname)s | %(name)s | %(message)s", "%Y-%m-%d %H:%M:%S")
        )
        for name in self.logger_names:
            logging.getLogger(name).addHandler(handler)
        self._handler = handler

    def close(self) -> None:
        """Detach and close the file handler (idempotent)."""
        if self._handler is None:
            return
        for name in self.logger_names:
            logging.getLogger(name).removeHandler(self._handler)
        self._handler.close()
        self._handler = None

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
        if self._handler is not None:
            # through the handler's own stream: no interleaving with the log records
            self._handler.acquire()
            try:
                self._handler.stream.write(line)
                self._handler.flush()
            finally:
                self._handler.release()
        else:
            with open(self._resolve(args), "a", encoding="utf-8") as handle:
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
