"""`Trainer` for Fun-ASR-Nano: FunASR's batch types in the train dataloader, CER from batched generation
at every evaluation.

Evaluation = the Trainer's teacher-forced loss (`eval_loss`), FunASR's teacher-forced token accuracy
(`eval_acc`: the mean over evaluation batches of each batch's argmax accuracy on the label tokens, as FunASR's
validation computes ``acc``) + greedy decoding of every eval example's prompt, left-padded in batches by the
package's one decoding loop (`inference.featurized_batches` + `inference.decode_batches`, with a progress bar on
the main process), scored with the shipped metric (`evaluation.compute_error_rates`): `eval_cer` (characters),
`eval_wer` (words), `eval_mer` (mixed error rate: CJK characters + other words); the normaliser's name is logged
next to them (metrics themselves must be numbers). A `compute_transcript_metrics(predictions, references)`
callable adds its own metrics on the same strings. With several processes every rank runs the same number of
`generate` calls (short shards are padded with repeats whose output is dropped): under DeepSpeed ZeRO-3 each
call gathers the partitioned parameters collectively, and one rank calling fewer times would hang the others.
`evaluate_saved_weights` evaluates another saved model or adapter (the n-best average) with the same loop.

Fault tolerance (tests/fault/README.md):

* checkpoints are written atomically and resuming takes the newest complete one, vetted first
  (`checkpointing`); ``train(resume_from_checkpoint=True)`` means that one, not transformers' newest folder;
* a non-finite loss or gradient is caught at the step and named with the examples' keys, which the train
  dataloader carries in the batch (``example_keys``, popped before the forward pass); the batch is skipped
  or training stops (`nonfinite`);
* an out-of-memory error in a training step names the batch and the options to turn (`oom`);
* `testing.faults.fault_point` marks where the fault-injection tests kill the process (a no-op in normal use).

The private transformers / accelerate internals this needs are each behind one named helper below, with the
versions they were checked against (tests/training/test_trainer_internals.py guards them).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Collection, Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

from ..data.collator import IGNORE_INDEX, SKIPPED_FIELD, loadable
from ..data.featurize import set_epoch, source_lengths
from ..data.samplers import build_batch_sampler
from ..data.streaming import StreamingBatches
from ..evaluation import NORMALIZER_NAME, RATE_NAMES, compute_error_rates
from ..inference.transcribe import GenerationBatch, decode_batches, featurized_batches
from ..testing.faults import fault_point
from .checkpointing import (
    atomic_directory,
    check_saved_covers_training,
    newest_complete_checkpoint,
    remove_stale_temporaries,
    vet_checkpoint,
)
from .nonfinite import NonFiniteGuard
from .oom import BatchShape, out_of_memory_guard
from .precision import install_grad_scaler
from .schedulers import SCHEDULERS, WARMUPLR, get_warmuplr_schedule
from .secrets import protect_secrets

logger = logging.getLogger(__name__)

KEYS_FIELD = "example_keys"


# ----------------------------------------------------------------------------------------------------------
# Private transformers / accelerate internals this trainer relies on, each behind one named helper (or, for
# the hooks it overrides, one method), checked against transformers 5.23.0 and accelerate 1.15.0.
# tests/training/test_trainer_internals.py fails when one of them moves or changes its signature.
# ----------------------------------------------------------------------------------------------------------
def _trainer_run_dir(trainer: Trainer, trial: Any) -> str:
    """The folder the Trainer puts ``checkpoint-<step>`` in (``args.output_dir``, or a hyperparameter-search
    trial's subfolder). transformers 5.23.0: private ``Trainer._get_output_dir(trial)``."""
    return Trainer._get_output_dir(trainer, trial=trial)


def _write_trainer_checkpoint(trainer: Trainer, model: torch.nn.Module, trial: Any) -> None:
    """The Trainer's own checkpoint writing: model, optimizer, scheduler, scaler, RNG states and trainer_state
    into ``<_get_output_dir(trial)>/checkpoint-<step>``, then its hub push (when ``args.push_to_hub``) and its
    rotation. transformers 5.23.0: private ``Trainer._save_checkpoint(model, trial)``."""
    Trainer._save_checkpoint(trainer, model, trial)


def _push_checkpoint(trainer: Trainer, folder: str) -> None:
    """The Trainer's hub push of a checkpoint folder (``hub_strategy`` decides what goes). transformers 5.23.0:
    private ``Trainer._push_from_checkpoint(checkpoint_folder)`` (overridden below: it uploads via
    `_upload_model_repo`)."""
    trainer._push_from_checkpoint(folder)


def _hub_upload_folder(**kwargs: Any) -> Any:
    """``HfApi.upload_folder`` through the object the Trainer itself uses (so a test that intercepts the Trainer's
    uploads sees ours). transformers 5.23.0: ``transformers.trainer.hf_api()`` (module-level, undocumented)."""
    from transformers import trainer as trainer_module

    return trainer_module.hf_api().upload_folder(**kwargs)


def _track_push(trainer: Trainer, jobs: list[Any]) -> None:
    """Register background upload jobs so the Trainer waits for them at the end. transformers 5.23.0:
    ``Trainer.push_in_progress`` (a ``transformers.utils.hub.PushInProgress`` or None)."""
    from transformers.utils.hub import PushInProgress

    if trainer.push_in_progress is None or trainer.push_in_progress.is_done():
        trainer.push_in_progress = PushInProgress(jobs)
    else:
        trainer.push_in_progress.jobs.extend(jobs)


# What a model repository holds: the adapter or the model, the processor, the card, metrics and the (secret-free)
# training arguments -- files at the top of the output folder only. Checkpoints (optimizer states) go only with
# hub_strategy "checkpoint" / "all_checkpoints", as transformers documents; final/, the n-best average, logs and
# staging folders never.
MODEL_REPO_FILES = (
    "README.md",
    "adapter_config.json",
    "adapter_model.safetensors",
    "config.json",
    "generation_config.json",
    "model*.safetensors",
    "model.safetensors.index.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "processor_config.json",
    "preprocessor_config.json",
    "*_results.json",
    "training_args.bin",
)


def _rotate_checkpoints(trainer: Trainer, run_dir: str) -> None:
    """The Trainer's ``save_total_limit`` rotation, keeping its best checkpoint. transformers 5.23.0:
    ``transformers.trainer_utils.rotate_checkpoints(output_dir, save_total_limit, best_model_checkpoint,
    use_mtime)`` (not in the documented API)."""
    rotate_checkpoints(
        output_dir=run_dir,
        save_total_limit=trainer.args.save_total_limit,
        best_model_checkpoint=trainer.state.best_model_checkpoint,
        use_mtime=True,
    )


def _mark_scheduler_created(trainer: Trainer) -> None:
    """Tell the Trainer that it built the scheduler, so a later ``train()`` builds it again (for that run's
    length) instead of reusing it. transformers 5.23.0: private ``Trainer._created_lr_scheduler``, set by
    ``Trainer.create_scheduler`` and read in ``Trainer._prepare_for_training``."""
    trainer._created_lr_scheduler = True


def _load_model_weights(trainer: Trainer, folder: str) -> None:
    """Load the weights of a saved model or adapter folder (a checkpoint, ``final/``, the n-best average) into
    the trainer's model: peft adapters through ``PeftModel.load_adapter``, full models through
    ``load_state_dict``. transformers 5.23.0: private ``Trainer._load_from_checkpoint(resume_from_checkpoint,
    model=None)``."""
    Trainer._load_from_checkpoint(trainer, folder)


def _undo_accelerate_sharding(loader: DataLoader, sampler: Any) -> None:
    """Our batch sampler already shards by rank: stop accelerate from sharding its batches again. With several
    processes, ``Accelerator.prepare`` wraps a DataLoader's batch sampler in a ``BatchSamplerShard`` (the
    prepared loader's ``batch_sampler``) that keeps every ``num_processes``-th batch from ``process_index``;
    one process, one index makes it pass every batch through. accelerate 1.15.0:
    ``accelerate.data_loader.BatchSamplerShard`` fields ``batch_sampler``, ``num_processes``,
    ``process_index``. Does nothing when accelerate did not wrap `sampler` (one process)."""
    shard = getattr(loader, "batch_sampler", None)
    if getattr(shard, "batch_sampler", None) is sampler:
        shard.num_processes, shard.process_index = 1, 0


def token_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float | None:
    """FunASR's validation ``acc`` of one batch (metrics/compute_acc.py): the share of label tokens (labels
    != -100) whose teacher-forced argmax prediction is right; logits at position t predict the label at t+1.
    None when the batch has no label token (FunASR's NaN, left out of the mean)."""
    predictions = logits[:, :-1].argmax(-1)
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    total = int(mask.sum())
    if total == 0:
        return None
    return float((predictions[mask] == targets[mask]).sum()) / total


class _EpochEvents(TrainerCallback):
    """The epoch's batch order is a function of (seed, epoch): tell the sampler which epoch starts. Between
    epochs is also a fault-injection point."""

    def __init__(self, trainer: FunAsrNanoTrainer):
        self.trainer = trainer

    def on_epoch_begin(self, args, state, control, **kwargs):
        if self.trainer._batch_sampler is not None:
            self.trainer._batch_sampler.set_epoch(int(state.epoch or 0))
        set_epoch(self.trainer.train_dataset, int(state.epoch or 0))  # on-the-fly augmentation is seeded per epoch

    def on_train_begin(self, args, state, control, **kwargs):
        dataset = self.trainer.train_dataset
        if isinstance(dataset, StreamingBatches):  # resumed: the batches this rank consumed (0 on a fresh start)
            dataset.set_skip(state.global_step * args.gradient_accumulation_steps)

    def on_epoch_end(self, args, state, control, **kwargs):
        fault_point("epoch_end")


@dataclass
class _WithKeys:
    """The train collator plus each example's ``key`` (for messages about the batch); the trainer pops it."""

    collate: Callable[[list[dict[str, Any]]], dict[str, Any]]

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.collate(examples)
        examples = loadable(examples)  # the collator drops (and names) examples whose audio did not load
        if "key" in examples[0]:
            batch[KEYS_FIELD] = [str(example["key"]) for example in examples]
        return batch


class FunAsrNanoTrainer(Trainer):
    """The Hugging Face `Trainer`, with what fine-tuning Fun-ASR-Nano needs beyond it: FunASR's batch types in
    the train dataloader, the CER of greedy transcripts at every evaluation (a speech recogniser is judged by
    what it writes, not by its teacher-forced loss), checkpoints that are complete or invisible and resumes
    that take the newest complete one, and a clear stop (or skip) on a non-finite loss or an out-of-memory
    batch instead of a silently broken run (see the module docstring).

    Besides the `Trainer`'s own arguments:

    * `processor` -- the `FunAsrNanoHfProcessor` (tokenizer + feature extractor); required: it pads the
      prompts for CER decoding and turns generated ids into text.
    * `batch_type` -- FunASR's batch type for training (``"example"``, ``"length"`` or ``"token"``;
      `data.samplers.build_batch_sampler`). ``per_device_train_batch_size`` is FunASR's ``batch_size``: examples
      per batch for ``"example"``, the padded budget (fbank frames + text tokens of the longest example times
      the number of examples) for ``"length"``/``"token"``, whose batches are re-formed every epoch.
    * `sort_size`, `batch_size_sample_max` -- for ``"length"``/``"token"``: examples per rank in each buffer
      sorted by length (``<= 0``: no sorting), and the most examples in one batch (FunASR's ``dataset_conf``).
    * `eval_max_new_tokens` -- the cap on generated tokens per clip in CER decoding; None scales it with the
      batch's longest clip (`inference.default_max_new_tokens`).
    * `compute_transcript_metrics` -- ``f(predictions, references) -> {name: number}`` on the greedy transcripts
      and the ``text`` references (raw strings, dataset order), called at every evaluation after the built-in
      ``cer``/``wer``/``mer``; its metrics are logged as ``<prefix>_<name>`` (e.g. ``eval_bleu``) and can rank
      checkpoints (``metric_for_best_model``). The Trainer's own ``compute_metrics`` keeps its meaning (an
      ``EvalPrediction`` of the teacher-forced logits and labels) and is passed through unchanged.
    * `card_info` -- a `model_card.CardInfo`: the model card of ``final/``, ``final_merged/`` and `push_to_hub`
      is rendered from it (base model, data, error rates with their normaliser, the recipe) instead of the
      Trainer's draft; None keeps the Trainer's.
    * `on_nonfinite` -- ``"stop"`` (default) or ``"skip"``: what a NaN/inf loss or gradient does
      (`nonfinite.NonFiniteGuard`).
    * `scheduler` -- ``"warmuplr"`` (default): FunASR's learning-rate schedule (`schedulers`), warm-up length
      ``args.warmup_steps``; ``"hf"``: transformers' ``args.lr_scheduler_type``.
    * `grad_scaler_kwargs` -- ``torch.amp.GradScaler`` arguments (e.g. ``init_scale``) under ``--fp16``, which always
      trains with a GradScaler, on CPU too (`precision.install_grad_scaler`).

    The optimisation itself is FunASR's (``funasr/train_utils/trainer_ds.py``), not the Trainer's defaults:

    * weight decay on every trainable parameter, biases and norms included (FunASR builds its optimizer on
      ``model.parameters()``, one group; transformers leaves biases and norms undecayed);
    * with gradient accumulation each micro-batch's loss (the mean over its label tokens) is divided by the
      number of accumulated batches, so batches count equally whatever their token counts; transformers would
      divide the summed token losses by the label tokens of all accumulated batches (``num_items_in_batch``);
    * gradients clipped to ``args.max_grad_norm`` (FunASR's ``grad_clip``) at the accumulation boundary, before
      the optimizer step, as the Trainer already does.
    """

    def __init__(
        self,
        *args: Any,
        processor: Any = None,
        batch_type: str = "example",
        sort_size: int = 1024,
        batch_size_sample_max: int | None = 200,
        eval_max_new_tokens: int | None = None,
        card_info: Any = None,
        compute_transcript_metrics: Callable[[list[str], list[str]], dict[str, float]] | None = None,
        on_nonfinite: str = "stop",
        scheduler: str = WARMUPLR,
        grad_scaler_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ):
        if scheduler not in SCHEDULERS:
            raise ValueError(f"scheduler must be one of {list(SCHEDULERS)}, got {scheduler!r}")
        super().__init__(*args, **kwargs)
        if processor is None:
            raise ValueError("FunAsrNanoTrainer needs the processor (tokenizer + feature extractor)")
        self.scheduler_name = scheduler
        # FunASR's loss normalisation: the model's own per-batch token mean, divided by the accumulation steps in
        # `Trainer.training_step`; no `num_items_in_batch` is counted or passed to the model.
        self.model_accepts_loss_kwargs = False
        self.processor = processor
        self.batch_type = batch_type
        self.sort_size = sort_size
        self.batch_size_sample_max = batch_size_sample_max
        self.eval_max_new_tokens = eval_max_new_tokens
        self._batch_sampler = None
        self.card_info = card_info
        self._card_options = None  # the last create_model_card keyword arguments (model_card.CardOptions)
        self.compute_transcript_metrics = compute_transcript_metrics
        self.add_callback(_EpochEvents(self))
        # fp16: always a GradScaler, on CPU too (accelerate builds none there)
        self.grad_scaler = install_grad_scaler(self.accelerator, **(grad_scaler_kwargs or {}))
        self.nonfinite = NonFiniteGuard(
            on_nonfinite,
            distributed=self.args.world_size > 1,
            deepspeed=self.is_deepspeed_enabled,
            grad_scaler=self.grad_scaler is not None,
        )
        self._step_keys: list[str] | None = None  # set while a training step runs
        self.data_skipped: list[str] = []  # examples dropped by the train collator (audio failed to load)
        self._staging_root: str | None = None  # set while a checkpoint is written
        protect_secrets(self.args)  # training_args.bin (checkpoints, final/, pushes) carries no credential

    # -- resume from the newest complete checkpoint, vetted; stale temporaries removed -----------------------
    def train(self, resume_from_checkpoint: str | bool | None = None, *args: Any, **kwargs: Any) -> Any:
        """`Trainer.train`, except: ``resume_from_checkpoint=True`` is the newest COMPLETE checkpoint, the
        checkpoint is vetted before anything loads it, and leftovers of a killed run are removed first. At the
        end, the batches skipped for a non-finite loss are reported."""
        if self.args.should_save:
            remove_stale_temporaries(self.args.output_dir)
        if resume_from_checkpoint is True:
            resume_from_checkpoint = newest_complete_checkpoint(self.args.output_dir)
            if resume_from_checkpoint is None:
                raise ValueError(f"no complete checkpoint to resume from in {self.args.output_dir}")
        if resume_from_checkpoint:
            vet_checkpoint(resume_from_checkpoint)
            logger.info("resuming from %s", resume_from_checkpoint)
        self.accelerator.wait_for_everyone()
        output = super().train(resume_from_checkpoint or None, *args, **kwargs)
        if self.data_skipped:
            output.metrics["train_skipped_examples"] = len(self.data_skipped)
            logger.warning("%d training examples skipped: their audio could not be loaded", len(self.data_skipped))
        summary = self.nonfinite.summary()
        if summary:
            logger.warning(summary)
            output.metrics["train_nonfinite_skipped_batches"] = len(self.nonfinite.skipped)
            self.log({"nonfinite_skipped_batches": len(self.nonfinite.skipped)})
        return output

    # -- atomic checkpoints ------------------------------------------------------------------------------
    def atomic_output(self, target: str | os.PathLike, complete_marker: bool = False) -> AbstractContextManager[Path]:
        """`checkpointing.atomic_directory` for a folder all processes write and the saving one publishes."""
        return atomic_directory(
            target,
            complete_marker=complete_marker,
            main_process=self.args.should_save,
            barrier=self.accelerator.wait_for_everyone,
        )

    def _get_output_dir(self, trial: Any) -> str:
        """Override of a private hook (transformers 5.23.0: ``Trainer._get_output_dir(trial)``, which
        ``Trainer._save_checkpoint`` asks where to write): the staging folder while a checkpoint is written."""
        return self._staging_root if self._staging_root is not None else _trainer_run_dir(self, trial)

    def _save_checkpoint(self, model: torch.nn.Module, trial: Any) -> None:
        """Override of a private hook (transformers 5.23.0: ``Trainer._save_checkpoint(model, trial)``, called
        at every save step). The Trainer's checkpoint, written into ``.tmp-checkpoint-<step>/`` and published
        complete (fsync, marker, rename); the Trainer's own hub push and rotation run on the published
        folder."""
        run_dir = Path(_trainer_run_dir(self, trial))
        target = run_dir / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        push, self.args.push_to_hub = self.args.push_to_hub, False  # pushed below, once published
        try:
            with self.atomic_output(target, complete_marker=True) as staged:
                self._staging_root = str(staged.parent)
                try:
                    _write_trainer_checkpoint(self, model, trial)
                finally:
                    self._staging_root = None
                if self.state.best_model_checkpoint == str(staged):  # the Trainer saw the staging path
                    self.state.best_model_checkpoint = str(target)  # on every rank: all load the best at the end
                    if self.args.should_save:
                        self.state.save_to_json(str(staged / "trainer_state.json"))
                fault_point("save")
        finally:
            self.args.push_to_hub = push
        if push:
            _push_checkpoint(self, str(target))
        if self.args.should_save:
            _rotate_checkpoints(self, str(run_dir))

    def _save(self, output_dir: str | None = None, state_dict: dict[str, torch.Tensor] | None = None) -> None:
        """`Trainer._save` (checkpoints, `final/`, pushes: the model, processor and training arguments), then the
        guard that what was written holds every trained parameter (`checkpointing.check_saved_covers_training`)."""
        super()._save(output_dir, state_dict)
        if self.args.should_save:
            folder = output_dir or self.args.output_dir
            check_saved_covers_training(self.accelerator.unwrap_model(self.model), folder)
            if self.card_info is not None:
                from .model_card import fix_adapter_config

                fix_adapter_config(folder, self.card_info)  # the base named for peft's AutoPeftModel
                self.write_model_card(folder)  # replaces peft's blank template

    # -- hub: only what belongs in a model repository -----------------------------------------------------
    def _upload_model_repo(
        self, commit_message: str, *, blocking: bool, token: str | None = None, revision: str | None = None
    ) -> Any:
        """Upload the model-repository files at the top of the output folder (`MODEL_REPO_FILES`), nothing else."""
        return _hub_upload_folder(
            repo_id=self.hub_model_id,
            folder_path=self.args.output_dir,
            commit_message=commit_message,
            token=token if token is not None else self.args.hub_token,
            run_as_future=not blocking,
            allow_patterns=list(MODEL_REPO_FILES),
            ignore_patterns=["*/*"],  # nothing from a subfolder (checkpoints, final/, model_avg/, staging)
            revision=revision if revision is not None else self.args.hub_revision,
        )

    def push_to_hub(
        self,
        commit_message: str | None = "End of training",
        blocking: bool = True,
        token: str | None = None,
        revision: str | None = None,
        **kwargs: Any,
    ) -> Any:
        """`Trainer.push_to_hub`, uploading only `MODEL_REPO_FILES`: the model (saved at the top of the output
        folder, as the Trainer does), processor, card (`create_model_card`, whose keyword arguments pass
        through), metrics and the training arguments without secrets."""
        self.callback_handler.on_push_begin(self.args, self.state, self.control)
        model_name = kwargs.pop("model_name", None) or (self.args.hub_model_id or Path(self.args.output_dir).name)
        if self.hub_model_id is None:
            self.init_hf_repo(token=token if token is not None else self.args.hub_token)
        self.save_model(_internal_call=True)
        if not self.is_world_process_zero():
            return None
        self.create_model_card(model_name=model_name.split("/")[-1], **kwargs)
        self._finish_current_push()
        return self._upload_model_repo(
            commit_message or "End of training", blocking=blocking, token=token, revision=revision
        )

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        """Override of a private hook (transformers 5.23.0: ``Trainer._push_from_checkpoint(checkpoint_folder)``,
        the push at each save): the checkpoint's model files are copied to the top of the output folder and
        `MODEL_REPO_FILES` uploaded; the checkpoint folder itself (optimizer states) only with ``hub_strategy``
        ``"checkpoint"`` / ``"all_checkpoints"``."""
        import shutil

        from transformers.trainer_utils import HubStrategy

        if not self.is_world_process_zero() or self.args.hub_strategy == HubStrategy.END:
            return
        if not self.args.hub_always_push and self.push_in_progress is not None and not self.push_in_progress.is_done():
            return
        self.callback_handler.on_push_begin(self.args, self.state, self.control)
        source = Path(checkpoint_folder)
        for name in os.listdir(source):
            if any(Path(name).match(pattern) for pattern in MODEL_REPO_FILES) and (source / name).is_file():
                shutil.copy(source / name, Path(self.args.output_dir) / name)
        message = f"Training in progress, step {self.state.global_step}"
        jobs = [self._upload_model_repo(message, blocking=False)]
        if self.args.hub_strategy in (HubStrategy.CHECKPOINT, HubStrategy.ALL_CHECKPOINTS):
            in_repo = "last-checkpoint" if self.args.hub_strategy == HubStrategy.CHECKPOINT else source.name
            jobs.append(
                _hub_upload_folder(
                    repo_id=self.hub_model_id,
                    folder_path=str(source),
                    path_in_repo=in_repo,
                    commit_message=message + ", checkpoint",
                    token=self.args.hub_token,
                    run_as_future=True,
                    revision=self.args.hub_revision,
                )
            )
        _track_push(self, jobs)

    # -- optimisation as FunASR's trainer: decay on every parameter, warmuplr -------------------------------
    def get_decay_parameter_names(self, model: torch.nn.Module) -> list[str]:
        """Every parameter is decayed, biases and norms included: FunASR's optimizer has one parameter group
        with the whole model (``optim_class(model.parameters(), **optim_conf)``)."""
        return [name for name, _ in model.named_parameters()]

    def create_scheduler(
        self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None
    ) -> torch.optim.lr_scheduler.LRScheduler:
        """FunASR's ``warmuplr`` (`schedulers.get_warmuplr_schedule`, warm-up ``args.warmup_steps``) unless the
        trainer was built with ``scheduler="hf"``; then the Trainer's ``args.lr_scheduler_type``."""
        if self.scheduler_name != WARMUPLR or self.lr_scheduler is not None:
            return super().create_scheduler(num_training_steps, optimizer)
        warmup = self.args.get_warmup_steps(num_training_steps)
        self.lr_scheduler = get_warmuplr_schedule(optimizer if optimizer is not None else self.optimizer, warmup)
        _mark_scheduler_created(self)
        logger.info(
            "learning-rate schedule: FunASR's warmuplr, peak %g at update %d then 1/sqrt decay (lr_scheduler_type "
            "%r is not used: scheduler='hf' / --lr_scheduler_type selects transformers' schedules)",
            self.args.learning_rate,
            warmup,
            str(getattr(self.args.lr_scheduler_type, "value", self.args.lr_scheduler_type)),
        )
        return self.lr_scheduler

    # -- training step: non-finite loss/gradients, out of memory, example keys ------------------------------
    def training_step(
        self, model: torch.nn.Module, inputs: dict[str, Any], num_items_in_batch: Any = None
    ) -> torch.Tensor:
        """`Trainer.training_step`, guarded: the batch's example keys are popped (for messages), an
        out-of-memory error names the batch (`oom`), the loss is recorded for the non-finite check at the
        optimizer step (`nonfinite`; no host sync here)."""
        keys = inputs.pop(KEYS_FIELD, None) or []
        self._count_skipped(inputs.pop(SKIPPED_FIELD, None) or [])
        step = self.state.global_step + 1
        shape = BatchShape.of(inputs, keys)
        self._step_keys = keys
        fault_point("step_begin")
        try:
            with out_of_memory_guard(
                step,
                shape,
                device=str(self.args.device),
                batch_type=self.batch_type,
                batch_size=self.args.per_device_train_batch_size,
            ):
                loss = super().training_step(model, inputs, num_items_in_batch)
        finally:
            self._step_keys = None
        fault_point("step")
        if not self.args.logging_nan_inf_filter:  # a skipped batch's loss counts 0 in the logged mean (no sync)
            loss = torch.where(torch.isfinite(loss), loss, torch.zeros_like(loss))
        return loss

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Any:
        """`Trainer.compute_loss`; in a training step the loss is recorded for the non-finite check (`nonfinite`)."""
        result = super().compute_loss(
            model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
        )
        if self._step_keys is not None:  # a training step, not evaluation
            loss = result[0] if return_outputs else result
            self.nonfinite.record_loss(loss, self.state.global_step + 1, self._step_keys)
        return result

    def _get_grad_norm(self, model: torch.nn.Module, grad_norm: Any = None) -> Any:
        """Override of a private hook (transformers 5.23.0: ``Trainer._get_grad_norm(model, grad_norm=None)``, called
        once per optimizer step, before it, with the clipped norm or None): the total gradient norm -- unscaled
        (the GradScaler unscales before clipping) and, with DDP, of the all-reduced gradients -- then the
        non-finite check of the step (`nonfinite.NonFiniteGuard.check_step`), which drops the step's gradients
        under ``skip``."""
        grad_norm = super()._get_grad_norm(model, grad_norm=grad_norm)
        self.nonfinite.check_step(model, self.state.global_step + 1, grad_norm, gather=self._gather)
        return grad_norm

    def _count_skipped(self, skipped: list[str]) -> None:
        """Examples the loader workers could not load (``--on_bad_data skip``, on-the-fly features): named in
        the log when met, counted in the train metrics."""
        for reason in skipped:
            logger.warning("skipped an example whose audio could not be loaded: %s", reason)
        self.data_skipped.extend(skipped)

    def _gather(self, value: Any) -> list[Any]:
        from accelerate.utils import gather_object

        return gather_object([value])

    # -- training data: FunASR's batch types ---------------------------------------------------------
    def get_train_dataloader(self) -> DataLoader:
        """Batches from FunASR's batch sampler of `batch_type` (sharded by rank, ordered by seed and epoch),
        each carrying its examples' keys. For ``"length"``/``"token"`` the batches are re-formed every epoch
        and their number, which then varies a little, is fixed over the run (`_fix_epoch_length`)."""
        dataset = self.train_dataset
        args = self.args
        if isinstance(dataset, StreamingBatches):
            return self._streaming_dataloader(dataset)
        sampler = build_batch_sampler(
            self.batch_type,
            source_lengths(dataset),
            batch_size=args.per_device_train_batch_size,
            batch_size_sample_max=self.batch_size_sample_max,
            sort_size=self.sort_size,
            seed=args.data_seed if args.data_seed is not None else args.seed,
            drop_last=args.dataloader_drop_last,
            num_replicas=args.world_size,
            rank=args.process_index,
        )
        if self.batch_type != "example":
            self._fix_epoch_length(sampler)
        loader = DataLoader(
            dataset,
            batch_sampler=sampler,
            collate_fn=_WithKeys(self.data_collator),
            num_workers=args.dataloader_num_workers,
            pin_memory=args.dataloader_pin_memory,
            persistent_workers=args.dataloader_persistent_workers and args.dataloader_num_workers > 0,
        )
        loader = self.accelerator.prepare(loader)
        _undo_accelerate_sharding(loader, sampler)
        self._batch_sampler = sampler
        return loader

    def _streaming_dataloader(self, stream: StreamingBatches) -> DataLoader:
        """`--streaming`: the stream yields whole batches, already split by rank (not prepared by accelerate,
        which would dispatch one process's batches to all); resuming skips the batches consumed before the
        checkpoint inside the stream (`_StreamResume`), without computing their features."""
        if self.args.max_steps <= 0:
            raise ValueError("--streaming needs --max_steps N (a stream has no length to count epochs by)")
        self.args.ignore_data_skip = True  # the stream skips, cheaply (the Trainer would featurise and drop)
        args = self.args
        return DataLoader(
            stream,
            batch_size=None,
            collate_fn=_WithKeys(self.data_collator),
            num_workers=args.dataloader_num_workers,
            pin_memory=args.dataloader_pin_memory,
            # its own generator: starting the iterator (after the resumed RNG state is loaded) must not draw from
            # the global one, or dropout after a resume would differ from the uninterrupted run
            generator=torch.Generator().manual_seed(args.seed),
        )

    def _fix_epoch_length(self, sampler: Any) -> None:
        """The Trainer reads ``len(dataloader)`` once and runs that many batches in every epoch (its epochs,
        ``max_steps``, schedules and resume arithmetic come from it), while buffered length batching forms a
        slightly different number of batches each epoch. Fix it to the largest count over the epochs this run
        can reach (`BatchSamplerBase.fix_num_batches`): no batch is cut off and no epoch runs short."""
        args = self.args
        first = len(sampler)
        if first == 0:
            return
        if args.max_steps > 0:  # the epochs max_steps needs at epoch 0's count; more batches need fewer epochs
            updates_per_epoch = -(-first // args.gradient_accumulation_steps)
            epochs = -(-args.max_steps // updates_per_epoch)
        else:
            epochs = max(math.ceil(args.num_train_epochs), 1)
        fixed = sampler.fix_num_batches(epochs)
        logger.info(
            "batch_type %s: %d batches per epoch on this process over %d epochs (epoch 0 forms %d; an epoch that "
            "forms fewer splits its largest batches)",
            self.batch_type,
            fixed,
            epochs,
            first,
        )

    def create_model_card(self, model_name: str | None = None, **kwargs: Any) -> None:
        """The card `push_to_hub` uploads (``<output_dir>/README.md``), built from `card_info` with the Trainer's
        keyword arguments honoured: ``language``, ``license``, ``tags``, ``model_name``, ``finetuned_from`` (the
        base's Hub id), ``tasks``, ``dataset_tags``, ``dataset``, ``dataset_args``
        (`model_card.CardOptions`); they are kept for the cards of folders saved afterwards."""
        if self.card_info is None:
            return super().create_model_card(model_name=model_name, **kwargs)
        from .model_card import CardOptions

        self._card_options = CardOptions.from_kwargs({"model_name": model_name, **kwargs})
        if self.is_world_process_zero():
            self.write_model_card(self.args.output_dir)

    def write_model_card(self, folder: str | os.PathLike, *, merged: bool = False) -> None:
        """README.md of a saved adapter (or, `merged`, of the model with the adapter merged) in `folder`: the
        run's `card_info`, the evaluation metrics logged so far (the latest of each) and the options of the
        last `create_model_card` call. Needs `card_info`."""
        from .model_card import CardOptions, build_model_card

        if self.card_info is None:
            raise ValueError("write_model_card needs the trainer's card_info (model_card.CardInfo)")
        options = getattr(self, "_card_options", None) or CardOptions()
        metrics: dict[str, float] = {}
        for entry in self.state.log_history:
            metrics.update({k: v for k, v in entry.items() if k.startswith("eval_")})
        name = (
            options.model_name
            or (self.args.hub_model_id or "").split("/")[-1]
            or os.path.basename(os.path.abspath(self.args.output_dir))
        )
        card = build_model_card(
            self.card_info, metrics, name, merged=merged, options=options, repo_id=self.args.hub_model_id
        )
        card.save(os.path.join(folder, "README.md"))

    # -- evaluation: loss, FunASR's token accuracy, CER from batched generation ----------------------------------
    def prediction_step(
        self,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        prediction_loss_only: bool,
        ignore_keys: list[str] | None = None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """`Trainer.prediction_step`, also recording the batch's teacher-forced token accuracy for ``eval_acc``
        (the logits are there anyway; they are not kept or gathered when only the loss is asked for)."""
        labels = inputs.get("labels")
        if labels is None or not hasattr(self, "_eval_accuracies"):
            return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys)
        loss, logits, gathered_labels = super().prediction_step(model, inputs, False, ignore_keys)
        logits = logits[0] if isinstance(logits, (tuple, list)) else logits
        accuracy = token_accuracy(logits, labels.to(logits.device))
        if accuracy is not None:
            self._eval_accuracies.append(accuracy)
        if prediction_loss_only:
            return loss, None, None
        return loss, logits, gathered_labels

    def evaluation_loop(
        self,
        dataloader: DataLoader,
        description: str,
        prediction_loss_only: bool | None = None,
        ignore_keys: list[str] | None = None,
        metric_key_prefix: str = "eval",
    ) -> Any:
        """`Trainer.evaluation_loop` (the teacher-forced loss), ``<prefix>_acc`` (FunASR's validation accuracy:
        the unweighted mean over batches of each batch's token accuracy, over all processes) and
        ``<prefix>_cer`` of the greedy transcripts of every example with a ``text``."""
        self._eval_accuracies: list[float] = []
        try:
            output = super().evaluation_loop(
                dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix
            )
            accuracies = self._eval_accuracies
        finally:
            del self._eval_accuracies
        if self.args.world_size > 1:
            from accelerate.utils import gather_object

            accuracies = gather_object(accuracies)
        if accuracies:
            output.metrics[f"{metric_key_prefix}_acc"] = sum(accuracies) / len(accuracies)
        fault_point("eval")
        dataset = dataloader.dataset
        if len(dataset) and "text" in dataset.column_names:
            started = time.perf_counter()
            predictions = self.generate_transcripts(dataset)
            output.metrics.update(
                self.transcript_metrics(predictions, list(dataset["text"]), metric_key_prefix, taken=output.metrics)
            )
            logger.info(
                "%s %s (normaliser %s) on %d utterances, decoded in %.1fs",
                metric_key_prefix,
                ", ".join(f"{name.upper()} {output.metrics[f'{metric_key_prefix}_{name}']:.4f}" for name in RATE_NAMES),
                NORMALIZER_NAME,
                len(predictions),
                time.perf_counter() - started,
            )
        return output

    def transcript_metrics(
        self, predictions: list[str], references: list[str], prefix: str, taken: Collection[str] = ()
    ) -> dict[str, float]:
        """``<prefix>_cer`` / ``_wer`` / ``_mer`` of the transcripts, then `compute_transcript_metrics`' own, which
        may not reuse a name the evaluation already reports (those, or `taken`: e.g. ``<prefix>_loss``)."""
        scores = compute_error_rates(predictions, references)
        metrics = {f"{prefix}_{name}": float(scores[name]) for name in RATE_NAMES}
        if self.compute_transcript_metrics is not None:
            extra = self.compute_transcript_metrics(list(predictions), list(references))
            if not isinstance(extra, dict):
                raise TypeError(
                    f"compute_transcript_metrics must return a dict of name -> number, got {type(extra).__name__}"
                )
            for name, value in extra.items():
                key = name if name.startswith(f"{prefix}_") else f"{prefix}_{name}"
                if key in metrics or key in taken:
                    raise ValueError(
                        f"compute_transcript_metrics returned {name!r}, which the evaluation already reports as {key}: "
                        "give your metric another name"
                    )
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise TypeError(f"compute_transcript_metrics: {name!r} must be a number, got {value!r}")
                metrics[key] = float(value)
        return metrics

    def evaluate_saved_weights(
        self, folder: str | os.PathLike, *, restore: str | os.PathLike, metric_key_prefix: str
    ) -> dict[str, float]:
        """Evaluate the model or adapter saved in `folder` (e.g. the n-best average) like the trained model --
        same data, loss, accuracy and CER -- as ``<metric_key_prefix>_*`` metrics (logged: log history,
        train.log), then put back the weights saved in `restore` (the final model, saved just before). Under
        DeepSpeed ZeRO-3 the trained parameters are gathered while they are replaced."""
        self._load_weights(folder)
        try:
            return self.evaluate(metric_key_prefix=metric_key_prefix)
        finally:
            self._load_weights(restore)

    def _load_weights(self, folder: str | os.PathLike) -> None:
        from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled

        if self.is_deepspeed_enabled and is_deepspeed_zero3_enabled():
            import deepspeed

            # every rank loads the same file; the gathered values of rank 0 are re-partitioned on exit. An adapter
            # holds the trained tensors only; a full model's file holds them all.
            adapter = hasattr(self.model, "peft_config")
            params = [p for p in self.model.parameters() if p.requires_grad or not adapter]
            with deepspeed.zero.GatheredParameters(params, modifier_rank=0):
                _load_model_weights(self, str(folder))
        else:
            _load_model_weights(self, str(folder))

    @torch.no_grad()
    def generate_transcripts(self, dataset: Any, batch_size: int | None = None) -> list[str]:
        """Greedy transcripts of every example's prompt (`inference.decode_batches`: the package's one decoding
        loop), batched in dataset order and left-padded, with a progress bar on the main process; with several
        processes each decodes a contiguous shard -- padded to the longest shard's number of batches, see the
        module docstring -- and the strings are gathered in dataset order."""
        from accelerate.utils import gather_object
        from tqdm.auto import tqdm

        model = self.accelerator.unwrap_model(self.model)
        was_training = model.training
        model.eval()
        world, rank = self.args.world_size, self.args.process_index
        batch_size = batch_size or self.args.per_device_eval_batch_size
        shard = dataset.shard(num_shards=world, index=rank, contiguous=True) if world > 1 else dataset
        pad_id = self.processor.tokenizer.pad_token_id
        batches = featurized_batches(shard, pad_id, batch_size=batch_size, max_new_tokens=self.eval_max_new_tokens)
        real = math.ceil(len(shard) / batch_size)
        calls = math.ceil(math.ceil(len(dataset) / world) / batch_size)  # the longest (first) contiguous shard's
        if calls > real:  # a repeat of the dataset's first example, decoded and dropped
            filler = next(featurized_batches(dataset.select([0]), pad_id, batch_size=1, max_new_tokens=1))
            batches = _padded(batches, calls - real, filler)
        progress = tqdm(
            total=calls, desc="decoding for CER", disable=not self.is_local_process_zero() or self.args.disable_tqdm
        )
        predictions: list[str] = []
        try:
            with self.accelerator.autocast():  # the training's mixed precision (the audio path stays fp32)
                for index, decoded in enumerate(
                    decode_batches(model, self.processor, batches, device=self.args.device)
                ):
                    if index < real:
                        predictions.extend(row.text for row in decoded)
                    progress.update(1)
        finally:
            progress.close()
            model.train(was_training)
        return gather_object(predictions) if world > 1 else predictions


def _padded(batches: Iterable[GenerationBatch], extra: int, filler: GenerationBatch) -> Iterator[GenerationBatch]:
    """`batches`, then `filler` `extra` times."""
    yield from batches
    for _ in range(extra):
        yield filler
