#!/usr/bin/env python
"""Fine-tune Fun-ASR-Nano with the Hugging Face Trainer (LoRA by default), FunASR's recipe on HF tools.

    accelerate launch examples/finetune.py --config examples/configs/lora.yaml [--key value ...]
    python examples/finetune.py --model_dir DIR --train_data train.jsonl --valid_data valid.jsonl --output_dir out

Options: FunASR's guide names, every transformers `TrainingArguments` option, FunASR's `++section.key=value`
overrides and nested YAML (`--config`); `--help` lists them with the defaults used (training/arguments.py).

The model comes from `load_pretrained` (original FunASR folder, HF folder, or a hub id, downloaded). The output dir gets
`train.log` (the whole run, errors with their tracebacks), the resolved `config.yaml`, self-contained
checkpoints (processor inside; one at every epoch end, as FunASR's `model.pt.ep{E}`), `final/` (the adapter or
model: the last weights, or the best with `--load_best_model_at_end true`), the n-best average `model_avg/`
(evaluated: `avg_eval_*` in all_results.json), and -- from an original FunASR folder -- the final model as
FunASR's `model.pt` (LoRA merged) that `funasr.AutoModel(model=output_dir)` loads. Checkpoints and output
folders are written atomically; `--resume` continues from the newest complete checkpoint, `--resume_from_checkpoint
PATH` from that one
(tests/fault/README.md lists the faults covered).
"""

from __future__ import annotations

import errno
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback, TrainingArguments, set_seed

from funasr_nano_hf import load_pretrained
from funasr_nano_hf.conversion.loading import detect_layout, resolve_model_dir
from funasr_nano_hf.data.augmentation import Augmentation
from funasr_nano_hf.data.collator import FunAsrNanoCollator
from funasr_nano_hf.data.featurize import MAX_PROBLEMS_SHOWN, PRECOMPUTED_AUGMENTATION, DataConfig, build_dataset
from funasr_nano_hf.data.streaming import StreamingBatches
from funasr_nano_hf.errors import DiskFullError
from funasr_nano_hf.models.processing_funasr_nano import FunAsrNanoHfProcessor
from funasr_nano_hf.training.arguments import (
    DataArguments,
    FinetuneArguments,
    ModelArguments,
    OptionError,
    parse_args,
    save_resolved_config,
)
from funasr_nano_hf.training.callbacks import (
    NBEST_METRICS,
    CurvePlotCallback,
    EpochEarlyStoppingCallback,
    EpochEndValidationCallback,
    FileLoggerCallback,
    LossExplosionCallback,
    NBestCheckpointCallback,
    TrainLog,
)
from funasr_nano_hf.training.checkpointing import (
    checkpoint_problem,
    disk_full_error,
    newest_complete_checkpoint,
    scan_checkpoints,
    set_run_id,
)
from funasr_nano_hf.training.funasr_model import funasr_export_command, write_funasr_model
from funasr_nano_hf.training.model_card import CardInfo
from funasr_nano_hf.training.model_setup import prepare_model_for_finetuning
from funasr_nano_hf.training.output_dir import OutputDirError, claim_output_dir, shared_run_id
from funasr_nano_hf.training.precision import apply_precision, check_training_device, checkpoint_llm_dtype
from funasr_nano_hf.training.trainer import FunAsrNanoTrainer

logger = logging.getLogger("finetune")


def main(argv: list[str] | None = None) -> dict[str, float]:
    # 1. Parse arguments (guide defaults applied, DeepSpeed config / evaluation defaults / world size finalized)
    try:
        model_args, data_args, finetune_args, training_args = parse_args(argv)
        check_training_device(training_args.use_cpu)  # GPUs torch cannot see: stop, do not train on CPU
    except OptionError as err:
        raise SystemExit(f"finetune.py: error: {err}") from None

    # 2. Logging: train.log from here to the last error (traceback included), on the console too
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # The output folder: locked by this run, refused when it holds another run (nothing is written before)
    out = Path(training_args.output_dir)
    claim = None
    if training_args.process_index == 0:
        try:
            claim = claim_output_dir(
                out,
                resume=finetune_args.resume or bool(training_args.resume_from_checkpoint),
                overwrite=finetune_args.overwrite_output_dir,
            )
        except OutputDirError as err:
            raise SystemExit(f"finetune.py: error: {err}") from None
    try:
        with TrainLog(
            out / "train.log", main_process=training_args.process_index == 0, rank=training_args.process_index
        ):
            if claim is not None:
                claim.log()
            set_run_id(shared_run_id(claim.lock.run_id if claim else None, training_args.world_size))
            try:
                return _finetune(model_args, data_args, finetune_args, training_args, out)
            except OSError as err:  # a full disk: named, with what is intact, and a clean exit (status 1)
                if err.errno != errno.ENOSPC:
                    raise
                full = err if isinstance(err, DiskFullError) else disk_full_error(err, out, out)
                logger.error("%s", full.strerror)
                raise SystemExit(f"finetune.py: error: {full.strerror}") from None
    finally:
        if claim is not None:
            claim.release()


def _finetune(
    model_args: ModelArguments,
    data_args: DataArguments,
    finetune_args: FinetuneArguments,
    training_args: TrainingArguments,
    out: Path,
) -> dict[str, float]:
    """Steps 3-10 of the run, inside `TrainLog`."""
    # 3. Seed; the checkpoint to resume from (checked before any work); the output dir with the resolved options
    set_seed(training_args.seed)
    resume = _resume_point(finetune_args, out, training_args.resume_from_checkpoint)
    out.mkdir(parents=True, exist_ok=True)
    if training_args.process_index == 0:
        save_resolved_config(out / "config.yaml", model_args, data_args, finetune_args, training_args)

    # 4. Load model and processor (a hub id is downloaded first, by one process)
    with training_args.main_process_first(desc="model download"):
        model_dir = resolve_model_dir(model_args.model_dir, hub=model_args.hub, revision=model_args.model_revision)
    model, processor = load_pretrained(model_dir, attn_implementation=model_args.attn_implementation)
    try:  # --llm_dtype auto -> the checkpoint's on CUDA; bf16/fp16 -> the Trainer's autocast (+ GradScaler)
        _, notes = apply_precision(model_args, training_args, checkpoint_llm_dtype(model.config))
    except OptionError as err:
        raise SystemExit(f"finetune.py: error: {err}") from None
    for note in notes:
        logger.info("precision: %s", note)
    if training_args.process_index == 0:  # the resolved llm_dtype and mixed precision
        save_resolved_config(out / "config.yaml", model_args, data_args, finetune_args, training_args)

    # 5. Load the data: lengths and token ids cached; training features computed on the fly in the loader workers
    #    (with FunASR's dither, optional SpecAugment / speed perturbation, seeded per example), or precomputed
    #    (--precompute_features, --cache_frozen_audio);
    #    evaluation features precomputed, clean
    data_config = DataConfig.from_args(data_args)
    precompute = data_args.precompute_features or data_args.cache_frozen_audio
    if data_args.cache_frozen_audio and not data_args.precompute_features:
        logger.info("--cache_frozen_audio: training features precomputed (the frozen-path cache is built on them)")
    seed = training_args.data_seed if training_args.data_seed is not None else training_args.seed
    augmentation = data_config.augmentation(seed)  # dither, --specaug, --speed_perturb: training features only
    if precompute and augmentation.needs_on_the_fly:  # refused before any data work (featurize refuses it too)
        raise SystemExit(f"finetune.py: error: {PRECOMPUTED_AUGMENTATION}")
    if augmentation.active and not precompute and training_args.dataloader_persistent_workers:
        logger.warning(
            "--persistent_workers: loader workers keep the epoch they started with, so augmentation draws (dither, "
            "SpecAugment, speed) repeat every epoch (still reproducible); drop --dataloader_persistent_workers for "
            "fresh draws per epoch"
        )
    with training_args.main_process_first(desc="preparing data"):
        if data_args.streaming:
            train_set, train_report = _stream(data_args, processor, data_config, augmentation, training_args), None
        else:
            train_set, train_report = build_dataset(
                data_args.train_data, processor, data_config, precompute_features=precompute, augmentation=augmentation
            )
        valid_set = None
        if data_args.valid_data:
            valid_set, _ = build_dataset(data_args.valid_data, processor, data_config, precompute_features=True)
            if data_args.max_eval_samples:
                valid_set = valid_set.select(range(min(data_args.max_eval_samples, len(valid_set))))
    if train_report is not None:
        logger.info("train data: %s", train_report.format(MAX_PROBLEMS_SHOWN))

    # 6. Prepare the model (freezing/LoRA, fp32 master weights); with a frozen audio path, its output is computed
    # once, on the training device, each process its own shard
    model = prepare_model_for_finetuning(model, model_args)
    if data_args.cache_frozen_audio:
        from funasr_nano_hf.training.frozen_cache import add_audio_embeddings_sharded, release_frozen_audio_path

        model.to(training_args.device)
        train_set = add_audio_embeddings_sharded(
            train_set,
            model,
            rank=training_args.process_index,
            world_size=training_args.world_size,
            wait_for_all=_patient_barrier(),
        )
        if valid_set is None and model_args.use_lora:  # nothing runs the audio path again (saves rebuild from files)
            freed = release_frozen_audio_path(model)
            logger.info("frozen audio path released after caching: %.1fM parameters freed", freed / 1e6)

    # 7. Build the Trainer
    callbacks = _callbacks(finetune_args, out, validating=valid_set is not None)
    trainer = FunAsrNanoTrainer(
        model=model,
        args=training_args,
        train_dataset=train_set,
        eval_dataset=valid_set,
        data_collator=FunAsrNanoCollator(pad_token_id=processor.tokenizer.pad_token_id),
        processing_class=processor,
        processor=processor,
        batch_type=data_args.batch_type,
        sort_size=data_args.sort_size,
        batch_size_sample_max=data_args.batch_size_sample_max,
        eval_max_new_tokens=finetune_args.eval_max_new_tokens,
        callbacks=callbacks,
        card_info=CardInfo.from_args(
            model_args, data_args, training_args, train_set, valid_set, model_dir=model_dir, finetune_args=finetune_args
        ),
        on_nonfinite=finetune_args.on_nonfinite,
        scheduler=finetune_args.scheduler,
    )

    # 8. Train
    result = trainer.train(resume_from_checkpoint=resume)

    # 9. Save (final/, final_merged/, FunASR's model.pt), evaluate the final model and the n-best average, push
    _save_final(trainer, processor, model_args, model_dir, out)
    metrics = dict(result.metrics)
    metrics.update(next(c for c in callbacks if isinstance(c, LossExplosionCallback)).metrics())
    if valid_set is not None:
        metrics.update(trainer.evaluate())
        averaged = next((c.averaged_dir for c in callbacks if isinstance(c, NBestCheckpointCallback)), None)
        averaged = _from_main_process(trainer, averaged)  # the n-best callback averages on the main process only
        if averaged is not None:
            metrics.update(
                trainer.evaluate_saved_weights(averaged, restore=out / "final", metric_key_prefix="avg_eval")
            )
    trainer.save_metrics("all", metrics)
    if training_args.push_to_hub:
        trainer.push_to_hub(commit_message="funasr_nano_hf fine-tune")

    # 10. Finish together: every process waits for the others, then the process group is closed, so that no
    # process tears its connections down while another still uses them (a rank leaving first at interpreter exit
    # was seen to abort under ZeRO-3 on gloo)
    trainer.accelerator.wait_for_everyone()
    trainer.accelerator.end_training()
    return metrics


def _patient_barrier() -> Callable[[], None]:
    """A barrier that waits for every process however long the slowest takes: a gloo group with a day's timeout
    (the default group's ``ddp_timeout`` would end a run whose slowest rank embeds for longer). The group is made
    now, while the processes are together; the returned call waits once, then releases it."""
    import datetime

    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return lambda: None
    group = dist.new_group(backend="gloo", timeout=datetime.timedelta(days=1))

    def wait() -> None:
        dist.barrier(group=group)
        dist.destroy_process_group(group)

    return wait


def _stream(
    data_args: DataArguments,
    processor: FunAsrNanoHfProcessor,
    data_config: DataConfig,
    augmentation: Augmentation,
    training_args: TrainingArguments,
) -> StreamingBatches:
    """`--streaming`: the training manifests as a stream of token-budget batches, this rank's share."""
    if data_args.precompute_features or data_args.cache_frozen_audio:
        raise SystemExit("finetune.py: error: --streaming computes features on the fly: drop --precompute_features "
                         "and --cache_frozen_audio")  # fmt: skip
    if training_args.max_steps <= 0:
        raise SystemExit("finetune.py: error: --streaming needs --max_steps N (a stream has no length)")
    if data_args.batch_type != "token":
        logger.info("--streaming batches by token budget (--batch_size %d)", data_args.batch_size)
    return StreamingBatches(
        data_args.train_data,
        processor,
        data_config,
        batch_size=training_args.per_device_train_batch_size,
        sort_size=data_args.sort_size,
        batch_size_sample_max=data_args.batch_size_sample_max,
        seed=augmentation.seed,
        rank=training_args.process_index,
        world_size=training_args.world_size,
        augmentation=augmentation,
    )


def _from_main_process(trainer: FunAsrNanoTrainer, value: Any) -> Any:
    """`value` as the main process has it, on every process (they all take part in an evaluation)."""
    if trainer.args.world_size == 1:
        return value
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([value], from_process=0)[0]


def _callbacks(finetune_args: FinetuneArguments, out: Path, validating: bool) -> list[TrainerCallback]:
    """train.log, curves, FunASR's epoch-end validation/checkpoint, its n-best checkpoints (by the validation
    metric; without validation data the newest) and its early stopping (epochs without eval-loss improvement)."""
    callbacks: list[TrainerCallback] = [
        FileLoggerCallback(os.path.join(out, "train.log")),
        CurvePlotCallback(),
        EpochEndValidationCallback(),
        LossExplosionCallback(),
    ]
    metric, greater_is_better = NBEST_METRICS[finetune_args.avg_keep_nbest_models_type] if validating else (None, True)
    callbacks.append(
        NBestCheckpointCallback(
            keep_nbest_models=finetune_args.keep_nbest_models,
            avg_nbest_model=finetune_args.avg_nbest_model,
            metric=metric,
            greater_is_better=greater_is_better,
        )
    )
    if validating:
        callbacks.append(EpochEarlyStoppingCallback(early_stopping_patience=finetune_args.early_stopping_patience))
    elif finetune_args.early_stopping_patience > 0:
        logger.warning(
            "early_stopping_patience %d needs validation data (--valid_data): early stopping is off for this run",
            finetune_args.early_stopping_patience,
        )
    return callbacks


def _resume_point(finetune_args: FinetuneArguments, out: Path, explicit: str | None = None) -> str | None:
    """`--resume_from_checkpoint PATH` (transformers' name): that checkpoint, which must be complete. `--resume`
    (FunASR's train_conf.resume): the newest COMPLETE checkpoint in the output dir (torn ones are logged and
    skipped); none: a fresh start; only torn ones: stop rather than train from scratch over them. The Trainer
    vets the files of either before loading them."""
    if explicit:
        if not Path(explicit).is_dir():
            raise SystemExit(f"--resume_from_checkpoint {explicit}: no such checkpoint folder")
        problem = checkpoint_problem(explicit)
        if problem:
            raise SystemExit(
                f"--resume_from_checkpoint {explicit}: not a complete checkpoint ({problem}). If you know it is "
                "complete (e.g. written before atomic checkpoints), mark it with "
                "funasr_nano_hf.training.checkpointing.mark_complete(path)"
            )
        if finetune_args.resume:
            logger.info("--resume_from_checkpoint %s given: resuming from it, not from the newest in %s", explicit, out)
        return str(explicit)
    if not finetune_args.resume:
        return None
    resume = newest_complete_checkpoint(out)
    if resume is None:
        torn = scan_checkpoints(out)[1]
        if torn:
            listing = "; ".join(f"{path.name}: {problem}" for path, problem in sorted(torn.items()))
            raise RuntimeError(
                f"--resume: no complete checkpoint in {out}, only incomplete ones ({listing}). To resume from one "
                "you know is complete (e.g. written before atomic checkpoints), mark it with "
                "funasr_nano_hf.training.checkpointing.mark_complete(path); to start over, use a new --output_dir"
            )
        logger.info("--resume: no checkpoint in %s, starting fresh", out)
    return resume


def _save_final(
    trainer: FunAsrNanoTrainer, processor: FunAsrNanoHfProcessor, model_args: ModelArguments, model_dir: str, out: Path
) -> None:
    """`final/` (the adapter, or the model, with the processor): the weights the run ends with -- the last ones, or
    the best checkpoint's with ``--load_best_model_at_end true``; `final_merged/` with `--merge_lora`; and the same
    model as FunASR's `model.pt` (+ its config files) at the top of `out` when the base is an original folder."""
    final = out / "final"
    with trainer.atomic_output(final) as staged:
        trainer.save_model(str(staged))
        if trainer.args.should_save:
            processor.save_pretrained(str(staged))
    adapter = final if model_args.use_lora else None
    if adapter is not None and model_args.merge_lora:
        with trainer.atomic_output(out / "final_merged") as staged:
            if trainer.args.should_save:
                merged = _merged_from_saved(model_args, model_dir, adapter)
                merged.save_pretrained(str(staged))
                processor.save_pretrained(str(staged))
                trainer.write_model_card(staged, merged=True)
    if not trainer.args.should_save:
        return
    trained = model_dir if adapter is not None else final
    if detect_layout(model_dir) == "original":
        write_funasr_model(out, model_dir, trained, adapter_dir=adapter)
    else:
        logger.warning(
            "no FunASR model.pt in %s: --model_dir %s is an HF folder, and the export needs the ORIGINAL FunASR "
            "folder it came from as template; export later with: %s",
            out,
            model_args.model_dir,
            funasr_export_command(trained, adapter, str(out / "funasr")),
        )


def _merged_from_saved(model_args: ModelArguments, model_dir: str, adapter_dir: Path) -> torch.nn.Module:
    """The base model with the saved adapter merged, its LLM in the run's `llm_dtype` (the weights merge there,
    as they would in the trained model). Built from the files, not from the training model, which stays as it is
    (its adapter is evaluated and pushed afterwards; under ZeRO-3 its weights are partitioned)."""
    from peft import PeftModel

    from funasr_nano_hf.models.configuration_funasr_nano import DTYPES

    base, _ = load_pretrained(model_dir, dtype=DTYPES[model_args.llm_dtype])
    return PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()


if __name__ == "__main__":
    main(sys.argv[1:])
