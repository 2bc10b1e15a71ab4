"""`Trainer` for Fun-ASR-Nano: FunASR's batch types in the train dataloader, CER from batched generation
at every evaluation.

Evaluation = the Trainer's teacher-forced loss (`eval_loss`) + greedy decoding of every eval example's
prompt, left-padded in batches, scored with the shipped mixed zh/en CER metric (`eval_cer`; the
normaliser's name is logged next to it, metrics themselves must be numbers).
"""

from __future__ import annotations

import logging
import time

import torch
from torch.utils.data import DataLoader
from transformers import Trainer, TrainerCallback

from ..data.collator import FunAsrNanoCollator
from ..data.samplers import build_batch_sampler
from ..evaluation import NORMALIZER_NAME, compute_cer
from ..inference.transcribe import default_max_new_tokens

logger = logging.getLogger(__name__)


class _SetSamplerEpoch(TrainerCallback):
    """The epoch's batch order is a function of (seed, epoch): tell the sampler which epoch starts."""

    def __init__(self, trainer: "FunAsrNanoTrainer"):
        self.trainer = trainer

    def on_epoch_begin(self, args, state, control, **kwargs):
        if self.trainer._batch_sampler is not None:
            self.trainer._batch_sampler.set_epoch(int(state.epoch or 0))


class FunAsrNanoTrainer(Trainer):
    def __init__(
        self,
        *args,
        processor=None,
        batch_type: str = "example",
        max_tokens: int | None = None,
        eval_max_new_tokens: int | None = None,
        card_info=None,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        if processor is None:
            raise ValueError("FunAsrNanoTrainer needs the processor (tokenizer + feature extractor)")
        self.processor = processor
        self.batch_type = batch_type
        self.max_tokens = max_tokens
        self.eval_max_new_tokens = eval_max_new_tokens
        self._batch_sampler = None
        self.card_info = card_info  # a model_card.CardInfo: our card replaces the Trainer's draft
        self.add_callback(_SetSamplerEpoch(self))

    # -- training data: FunASR's batch types ---------------------------------------------------------
    def get_train_dataloader(self) -> DataLoader:
        dataset = self.train_dataset
        lengths = [int(f) + int(t) for f, t in zip(dataset["num_frames"], dataset["num_tokens"])]
        args = self.args
        sampler = build_batch_sampler(
            self.batch_type,
            lengths,
            batch_size=args.per_device_train_batch_size,
            max_tokens=self.max_tokens,
            sort_size=None,
            seed=args.data_seed if args.data_seed is not None else args.seed,
            drop_last=args.dataloader_drop_last,
            num_replicas=args.world_size,
            rank=args.process_index,
        )
        loader = DataLoader(
            dataset,
            batch_sampler=sampler,
            collate_fn=self.data_collator,
            num_workers=args.dataloader_num_workers,
            pin_memory=args.dataloader_pin_memory,
            persistent_workers=args.dataloader_persistent_workers and args.dataloader_num_workers > 0,
        )
        loader = self.accelerator.prepare(loader)
        # Our sampler already shards by rank: stop accelerate from sharding its batches again.
        inner = getattr(loader, "batch_sampler", None)
        if getattr(inner, "batch_sampler", None) is sampler:
            inner.num_processes, inner.process_index = 1, 0
        self._batch_sampler = sampler
        return loader

    def create_model_card(self, model_name: str | None = None, **kwargs) -> None:
        """The card `push_to_hub` uploads: base model, data, CER with its normaliser, training options."""
        if self.card_info is None:
            return super().create_model_card(model_name=model_name, **kwargs)
        if not self.is_world_process_zero():
            return
        import os

        from .model_card import render_model_card

        metrics = {}
        for entry in self.state.log_history:
            metrics.update({k: v for k, v in entry.items() if k.startswith("eval_")})
        name = model_name or self.args.hub_model_id or os.path.basename(os.path.abspath(self.args.output_dir))
        with open(os.path.join(self.args.output_dir, "README.md"), "w", encoding="utf-8") as handle:
            handle.write(render_model_card(self.card_info, metrics, name))

    # -- evaluation: CER from batched generation -----------------------------------------------------
    def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None, metric_key_prefix="eval"):
        output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix)
        dataset = dataloader.dataset
        if len(dataset) and "text" in dataset.column_names:
            started = time.perf_counter()
            predictions = self.generate_transcripts(dataset)
            scores = compute_cer(predictions, list(dataset["text"]))
            output.metrics[f"{metric_key_prefix}_cer"] = scores["cer"]
            logger.info(
                "%s CER %.4f (normaliser %s) on %d utterances, decoded in %.1fs",
                metric_key_prefix, scores["cer"], NORMALIZER_NAME, len(predictions), time.perf_counter() - started,
            )
            self.last_predictions = predictions
        return output

    @torch.no_grad()
    def generate_transcripts(self, dataset, batch_size: int | None = None) -> list[str]:
        """Greedy transcripts of every example's prompt, batched and left-padded; with several processes
        each decodes a contiguous shard and the strings are gathered in dataset order."""
        from accelerate.utils import gather_object

        model = self.accelerator.unwrap_model(self.model)
        was_training = model.training
        model.eval()
        collate = FunAsrNanoCollator(pad_token_id=self.processor.tokenizer.pad_token_id, for_generation=True)
        batch_size = batch_size or self.args.per_device_eval_batch_size
        world, rank = self.args.world_size, self.args.process_index
        shard = dataset.shard(num_shards=world, index=rank, contiguous=True) if world > 1 else dataset
        frames_per_second = 100  # num_frames are 10 ms fbank frames
        predictions: list[str] = []
        for start in range(0, len(shard), batch_size):
            rows = shard.select(range(start, min(start + batch_size, len(shard))))
            batch = collate(list(rows))
            batch = {k: v.to(self.args.device) for k, v in batch.items()}
            max_new = self.eval_max_new_tokens or default_max_new_tokens(max(rows["num_frames"]) / frames_per_second)
            ids = model.generate(**batch, max_new_tokens=max_new, do_sample=False)
            predictions += self.processor.batch_decode_transcripts(ids[:, batch["input_ids"].shape[1] :])
        model.train(was_training)
        return gather_object(predictions) if world > 1 else predictions
