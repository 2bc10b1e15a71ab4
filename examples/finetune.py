#!/usr/bin/env python
"""Fine-tune Fun-ASR-Nano with the Hugging Face Trainer (LoRA by default), FunASR's recipe on HF tools.

    accelerate launch examples/finetune.py --config examples/configs/lora.yaml [--key value ...]
    python examples/finetune.py --model_dir DIR --train_data train.jsonl --valid_data valid.jsonl --output_dir out
    python examples/finetune.py ++model=DIR ++train_data_set_list=train.jsonl ++train_conf.max_epoch=10 ...

Options: FunASR's guide names, every transformers `TrainingArguments` option, FunASR's `++section.key=value`
overrides and nested YAML (`--config`); `--help` lists them with the defaults used (training/arguments.py).

The model comes from `load_pretrained` (original FunASR folder, HF folder, or a hub id, downloaded). The output
dir gets `train.log`, the resolved `config.yaml`, self-contained checkpoints (processor inside), the final
adapter (or model), and the n-best average. Checkpoints and output folders are written atomically;
`--resume` continues from the newest complete checkpoint, `--resume_from_checkpoint PATH` from that one
(tests/fault/README.md lists the faults covered).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from transformers import EarlyStoppingCallback, TrainerCallback, set_seed

from funasr_nano_hf import load_pretrained
from funasr_nano_hf.conversion.loading import resolve_model_dir
from funasr_nano_hf.data.collator import FunAsrNanoCollator
from funasr_nano_hf.data.featurize import MAX_PROBLEMS_SHOWN, DataConfig, build_dataset
from funasr_nano_hf.models.processing_funasr_nano import FunAsrNanoHfProcessor
from funasr_nano_hf.training.arguments import (
    FinetuneArguments,
    ModelArguments,
    OptionError,
    parse_args,
    save_resolved_config,
)
from funasr_nano_hf.training.checkpointing import checkpoint_problem, newest_complete_checkpoint, scan_checkpoints
from funasr_nano_hf.training.model_card import CardInfo
from funasr_nano_hf.training.model_setup import prepare_model_for_finetuning
from funasr_nano_hf.training.trainer import FunAsrNanoTrainer

logger = logging.getLogger("finetune")


def main(argv: list[str] | None = None) -> dict[str, float]:
    # 1. Parse arguments (guide defaults applied, DeepSpeed config / evaluation defaults / world size finalized)
    try:
        model_args, data_args, finetune_args, training_args = parse_args(argv)
    except OptionError as err:
        raise SystemExit(f"finetune.py: error: {err}") from None

    # 2. Logging and seed; the checkpoint to resume from (checked before any work); the output dir with the
    #    resolved options
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    set_seed(training_args.seed)
    out = Path(training_args.output_dir)
    resume = _resume_point(finetune_args, out, training_args.resume_from_checkpoint)
    out.mkdir(parents=True, exist_ok=True)
    if training_args.process_index == 0:
        save_resolved_config(out / "config.yaml", model_args, data_args, finetune_args, training_args)

    # 3. Load model and processor (a hub id is downloaded first, by one process)
    with training_args.main_process_first(desc="model download"):
        model_dir = resolve_model_dir(model_args.model_dir, hub=model_args.hub, revision=model_args.model_revision)
    model, processor = load_pretrained(model_dir)

    # 4. Load and featurize data
    data_config = DataConfig.from_args(data_args)
    with training_args.main_process_first(desc="featurizing"):
        train_set, train_report = build_dataset(data_args.train_data, processor, data_config)
        valid_set = None
        if data_args.valid_data:
            valid_set, _ = build_dataset(data_args.valid_data, processor, data_config)
            if data_args.max_eval_samples:
                valid_set = valid_set.select(range(min(data_args.max_eval_samples, len(valid_set))))
    logger.info("train data: %s", train_report.format(MAX_PROBLEMS_SHOWN))

    # 5. Prepare the model (freezing/LoRA); with a frozen audio path, its output is computed once
    model = prepare_model_for_finetuning(model, model_args)
    if data_args.cache_frozen_audio:
        from funasr_nano_hf.training.frozen_cache import add_audio_embeddings

        with training_args.main_process_first(desc="caching frozen audio embeddings"):
            train_set = add_audio_embeddings(train_set, model)

    # 6. Build the Trainer
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
        callbacks=_callbacks(finetune_args, out, validating=valid_set is not None),
        card_info=CardInfo.from_args(model_args, data_args, training_args, train_set, valid_set),
        on_nonfinite=finetune_args.on_nonfinite,
        scheduler=finetune_args.scheduler,
    )

    # 7. Train
    result = trainer.train(resume_from_checkpoint=resume)

    # 8. Save, evaluate, push
    _save_final(trainer, processor, model_args, out)
    metrics = dict(result.metrics)
    if valid_set is not None:
        metrics.update(trainer.evaluate())
    trainer.save_metrics("all", metrics)
    if training_args.push_to_hub:
        trainer.push_to_hub(commit_message="funasr_nano_hf fine-tune")
    return metrics


def _callbacks(finetune_args: FinetuneArguments, out: Path, validating: bool) -> list[TrainerCallback]:
    """train.log and curves always; with validation data, FunASR's n-best checkpoints (by CER) and early stopping."""
    from funasr_nano_hf.training.callbacks import CurvePlotCallback, FileLoggerCallback, NBestCheckpointCallback

    callbacks = [FileLoggerCallback(os.path.join(out, "train.log")), CurvePlotCallback()]
    if not validating:
        return callbacks
    callbacks.append(
        NBestCheckpointCallback(
            keep_nbest_models=finetune_args.keep_nbest_models,
            avg_nbest_model=finetune_args.avg_nbest_model,
            metric="eval_cer",
            greater_is_better=False,
        )
    )
    if finetune_args.early_stopping_patience > 0:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=finetune_args.early_stopping_patience))
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
    trainer: FunAsrNanoTrainer, processor: FunAsrNanoHfProcessor, model_args: ModelArguments, out: Path
) -> None:
    """`final/` (the adapter, or the model) with the processor; `final_merged/` with `--merge_lora`."""
    with trainer.atomic_output(out / "final") as staged:
        trainer.save_model(str(staged))
        if trainer.args.should_save:
            processor.save_pretrained(str(staged))
    if model_args.use_lora and model_args.merge_lora:
        merged = trainer.model.merge_and_unload()
        with trainer.atomic_output(out / "final_merged") as staged:
            if trainer.args.should_save:
                merged.save_pretrained(str(staged))
                processor.save_pretrained(str(staged))


if __name__ == "__main__":
    main(sys.argv[1:])
