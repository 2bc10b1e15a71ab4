#!/usr/bin/env python
"""Fine-tune Fun-ASR-Nano with the Hugging Face Trainer (LoRA by default), FunASR's recipe on HF tools.

    accelerate launch examples/finetune.py --config examples/configs/lora.yaml [--key value ...]
    python examples/finetune.py --model_dir DIR --train_data train.jsonl --valid_data valid.jsonl --output_dir out

The model comes from `load_pretrained` (original FunASR folder or HF folder). The output dir gets
`train.log`, the resolved `config.yaml`, self-contained checkpoints (processor inside), the final
adapter (or model), and the n-best average. Checkpoints and output folders are written atomically;
`--resume` continues from the newest complete checkpoint (tests/fault/README.md lists the faults covered).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from pathlib import Path

import yaml
from transformers import EarlyStoppingCallback, set_seed

from funasr_nano_hf import load_pretrained
from funasr_nano_hf.data.collator import FunAsrNanoCollator
from funasr_nano_hf.data.featurize import DataConfig, build_dataset
from funasr_nano_hf.training.arguments import parse_args
from funasr_nano_hf.training.checkpointing import newest_complete_checkpoint, scan_checkpoints
from funasr_nano_hf.training.model_card import CardInfo
from funasr_nano_hf.training.model_setup import prepare_model_for_finetuning
from funasr_nano_hf.training.trainer import FunAsrNanoTrainer

logger = logging.getLogger("finetune")


def _callbacks(finetune_args, output_dir, validating: bool):
    from funasr_nano_hf.training.callbacks import CurvePlotCallback, FileLoggerCallback, NBestCheckpointCallback

    callbacks = [FileLoggerCallback(os.path.join(output_dir, "train.log")), CurvePlotCallback()]
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


def _resume_point(finetune_args, out: Path) -> str | None:
    """--resume: the newest COMPLETE checkpoint (torn ones are logged and skipped). Only torn ones: stop
    rather than train from scratch over them."""
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


def main(argv: list[str] | None = None) -> dict:
    model_args, data_args, finetune_args, training_args = parse_args(argv)
    if training_args.deepspeed:
        # `--deepspeed CONFIG` fills the config's "auto" values when TrainingArguments is built, before the guide
        # options (batch_size, accum_grad, grad_clip) are applied: fill them again from the final values.
        from accelerate.utils import DeepSpeedPlugin
        from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig

        training_args.hf_deepspeed_config = HfTrainerDeepSpeedConfig(training_args.deepspeed)
        training_args.hf_deepspeed_config.trainer_config_process(training_args)
        training_args.deepspeed_plugin = DeepSpeedPlugin(hf_ds_config=training_args.hf_deepspeed_config)
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched != training_args.world_size:  # e.g. GPU launch flags on a CPU-only machine: N separate trainings
        raise RuntimeError(
            f"launched as {launched} processes but the Trainer sees {training_args.world_size}; without GPUs pass "
            "--use_cpu true (DDP), or --ddp_backend gloo (DeepSpeed through accelerate launch)"
        )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    set_seed(training_args.seed)
    out = Path(training_args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if training_args.process_index == 0:
        resolved = {
            name: dataclasses.asdict(args) if name != "training" else args.to_dict()
            for name, args in (("model", model_args), ("data", data_args), ("finetune", finetune_args),
                               ("training", training_args))
        }
        (out / "config.yaml").write_text(yaml.safe_dump(resolved, allow_unicode=True, sort_keys=False))

    model, processor = load_pretrained(model_args.model_dir)
    data_config = DataConfig(
        max_source_length=data_args.max_source_length,
        max_target_length=data_args.max_target_length,
        min_source_length=data_args.min_source_length,
        num_proc=data_args.feature_num_proc,
        on_bad_data=data_args.on_bad_data,
    )
    with training_args.main_process_first(desc="featurising"):
        train_set, train_report = build_dataset(data_args.train_data, processor, data_config)
        valid_set = None
        if data_args.valid_data:
            valid_set, _ = build_dataset(data_args.valid_data, processor, data_config)
            if data_args.max_eval_samples:
                valid_set = valid_set.select(range(min(data_args.max_eval_samples, len(valid_set))))
    logger.info("train data: %s", train_report.format())

    model = prepare_model_for_finetuning(model, model_args)
    if data_args.cache_frozen_audio:
        from funasr_nano_hf.training.frozen_cache import add_audio_embeddings

        with training_args.main_process_first(desc="caching frozen audio embeddings"):
            train_set = add_audio_embeddings(train_set, model)
    card_info = CardInfo(
        base_model=model_args.model_dir,
        train_data=list(data_args.train_data),
        valid_data=list(data_args.valid_data),
        train_examples=len(train_set),
        train_hours=sum(train_set["num_frames"]) / 100 / 3600,
        valid_examples=len(valid_set) if valid_set is not None else 0,
        use_lora=model_args.use_lora,
        options={
            "learning_rate": training_args.learning_rate,
            "num_train_epochs": training_args.num_train_epochs,
            "per_device_train_batch_size": training_args.per_device_train_batch_size,
            "gradient_accumulation_steps": training_args.gradient_accumulation_steps,
            "batch_type": data_args.batch_type,
            "llm_dtype": model_args.llm_dtype,
            "lora": f"r={model_args.lora_r}, alpha={model_args.lora_alpha}, dropout={model_args.lora_dropout}, "
            f"targets={model_args.lora_target_modules}" if model_args.use_lora else "off",
            "frozen": ", ".join(name for name, frozen in (("audio_encoder", model_args.freeze_audio_encoder),
                                                         ("audio_adaptor", model_args.freeze_audio_adaptor),
                                                         ("llm", model_args.freeze_llm)) if frozen) or "none",
            "seed": training_args.seed,
        },
    )
    if valid_set is not None:
        training_args.load_best_model_at_end = training_args.load_best_model_at_end or True
        training_args.metric_for_best_model = training_args.metric_for_best_model or "eval_cer"
        training_args.greater_is_better = not training_args.metric_for_best_model.endswith(("cer", "loss"))
    else:
        training_args.eval_strategy = "no"
        training_args.load_best_model_at_end = False
    trainer = FunAsrNanoTrainer(
        model=model,
        args=training_args,
        train_dataset=train_set,
        eval_dataset=valid_set,
        data_collator=FunAsrNanoCollator(pad_token_id=processor.tokenizer.pad_token_id),
        processing_class=processor,
        processor=processor,
        batch_type=data_args.batch_type,
        max_tokens=data_args.max_tokens,
        eval_max_new_tokens=finetune_args.eval_max_new_tokens,
        callbacks=_callbacks(finetune_args, str(out), validating=valid_set is not None),
        card_info=card_info,
        on_nonfinite=finetune_args.on_nonfinite,
    )
    result = trainer.train(resume_from_checkpoint=_resume_point(finetune_args, out))
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
    metrics = dict(result.metrics)
    if valid_set is not None:
        metrics.update(trainer.evaluate())
    trainer.save_metrics("all", metrics)
    if training_args.push_to_hub:
        trainer.push_to_hub(commit_message="funasr_nano_hf fine-tune")
    return metrics


if __name__ == "__main__":
    main(sys.argv[1:])
