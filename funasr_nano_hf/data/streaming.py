"""Streaming training data: examples read as a stream, never held in memory, cut into token-budget batches.

`StreamingBatches` is a torch ``IterableDataset`` of ready batches (lists of examples for the collator). A stream
has ``S = world_size * num_workers`` slots (rank ``r``, DataLoader worker ``w``: slot ``r * num_workers + w``), and
every example of an epoch goes to exactly one slot, from one of two record sources:

* sharded JSONL manifests (`--streaming true`, ``StreamingBatches(shards, ...)``): read by this module's own line
  reader, in a shard order shuffled per epoch; line ``i`` of the epoch goes to slot ``i % S``, so every slot has
  work whatever the shard count. Kept hand-written (not ``load_dataset("json", streaming=True)``): it names the
  ``file:line`` of a malformed line and skips or stops per ``on_bad_data``, which datasets' JSON streaming cannot
  (it fails the whole shard);
* a `datasets.IterableDataset` / `IterableDatasetDict` with an ``Audio`` column, e.g. a hub dataset loaded with
  ``streaming=True`` (Python API: `StreamingBatches.from_datasets`): datasets reads it (`hf_audio.HubStream`:
  ``shuffle(seed, buffer_size)`` + ``set_epoch`` per epoch, ``split_dataset_by_node`` over the S slots -- whole
  shards per slot when ``num_shards % S == 0``, else one example in S); the row -> record rule is `hf_audio`'s,
  and an example's augmentation index is a hash of its key (key column, else the Audio file name);
* each example gets what `featurize.prepare` caches in the map-style path (header lengths, FunASR's prompt ids, the
  length filters, counted), computed as it streams by;
* bucketing: a bounded buffer of ``sort_size`` examples is sorted by length and cut into FunASR's token-budget
  batches (`samplers.DynamicBatchSampler`'s greedy rule), whose order inside the buffer is shuffled;
* features (`featurize.example_features`, augmentation seeded per (seed, epoch, example)) are computed only for
  the batches that are yielded, in the DataLoader workers;
* the stream runs over epochs without end (the run is bounded by ``--max_steps``); `skip_batches` makes a resumed
  run start exactly where the checkpoint was taken: the batches before it are formed (headers only) and dropped,
  not featurised. The skip per worker follows the DataLoader's round-robin over workers (a resumed worker plays
  the stream whose turn it is). For a datasets stream this replay re-reads the stream (a hub dataset: downloads
  it again) from the epoch's start up to the checkpoint.

Batching and resume are hand-written for both sources, rather than left to a datasets stream's own state:
without torchdata's ``StatefulDataLoader`` (not installed with the pinned stack) a datasets stream cannot report
its per-worker state to the checkpoint, and its automatic shard-per-worker split leaves workers idle when shards
are fewer than workers. Here the stream's position is a pure function of (seed, epoch, batches consumed), so
resuming needs only the step count the checkpoint already holds.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import datasets
import numpy as np
from torch.utils.data import IterableDataset, get_worker_info

from ..errors import AudioError, DataError
from .augmentation import Augmentation
from .collator import BAD_FIELD
from .featurize import (
    MAX_PROBLEMS_SHOWN,
    DataConfig,
    _prepare_batch,
    drop_reason,
    example_features,
    perturbed_ids,
    text_length,
)
from .hf_audio import SHUFFLE_BUFFER_SIZE, HubStream
from .readers import Problem, _record_from_row, detect_format
from .samplers import cut_by_budget

logger = logging.getLogger(__name__)


class StreamingBatches(IterableDataset):
    """Batches of training examples streamed from sharded manifests (see the module docstring)."""

    def __init__(
        self,
        shards: list[str] | HubStream,
        processor: Any,
        config: DataConfig,
        *,
        batch_size: int,
        sort_size: int = 1024,
        batch_size_sample_max: int | None = 200,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        augmentation: Augmentation | None = None,
        epochs: int | None = None,
    ) -> None:
        self.epochs = epochs  # None: endless (the run is bounded by --max_steps)
        self.hub = shards if isinstance(shards, HubStream) else None
        self.shards = [] if self.hub else [str(Path(s).resolve()) for s in shards]
        missing = [s for s in self.shards if not Path(s).is_file()]
        if missing:
            raise DataError(f"streaming manifests not found: {', '.join(missing)}")
        self.formats = {s: detect_format(s) for s in self.shards}
        kaldi = [s for s, fmt in self.formats.items() if fmt == "kaldi"]
        if kaldi:
            raise DataError(f"--streaming reads JSONL manifests: convert {kaldi[0]} (funasr-nano-hf convert-data)")
        self.processor = processor
        self.config = config
        self.budget = int(batch_size)
        self.sort_size = max(int(sort_size), 1)
        self.batch_size_sample_max = batch_size_sample_max
        self.seed = int(seed)
        self.rank, self.world_size = int(rank), int(world_size)
        self.augmentation = augmentation
        extractor = processor.feature_extractor
        self.noisy = augmentation.extractor(extractor) if augmentation is not None else extractor
        self.skip_batches = 0  # batches this rank already consumed (set on resume)

    @classmethod
    def from_datasets(
        cls,
        dataset: datasets.IterableDataset | datasets.IterableDatasetDict,
        processor: Any,
        config: DataConfig,
        *,
        split: str = "train",
        audio_column: str = "audio",
        text_column: str = "text",
        key_column: str | None = None,
        shuffle_buffer_size: int = SHUFFLE_BUFFER_SIZE,
        **options: Any,
    ) -> StreamingBatches:
        """The stream of a `datasets.IterableDataset` / `IterableDatasetDict` with an Audio column (e.g.
        ``load_dataset(name, streaming=True)``), as the Trainer's ``train_dataset`` (with ``max_steps``).

        `options` are `__init__`'s: ``batch_size`` (token budget), ``sort_size``, ``seed``, ``rank`` /
        ``world_size`` (``TrainingArguments.process_index`` / ``world_size``), ``augmentation`` ...
        ``shuffle_buffer_size`` is datasets' shuffle buffer (0: stream order). ``key_column`` names examples in
        messages and seeds their augmentation; without it, the Audio file name does (else the row's place in the
        stream, which depends on the rank/worker layout). The bucketing buffer holds ``sort_size`` rows' encoded
        audio when the dataset embeds it (a hub dataset does): about ``sort_size`` x the mean file size."""
        hub = HubStream(
            dataset,
            split=split,
            audio_column=audio_column,
            text_column=text_column,
            key_column=key_column,
            shuffle_buffer_size=shuffle_buffer_size,
        )
        return cls(hub, processor, config, **options)

    def describe(self) -> str:
        """What is streamed, for messages."""
        return self.hub.describe() if self.hub else ", ".join(self.shards)

    # -- records of one slot, in the epoch's order -------------------------------------------------------------
    def _records(self, epoch: int, slot: int, slots: int, dropped: Counter) -> Iterator[tuple[int, dict[str, Any]]]:
        if self.hub is not None:
            for index, record, problems in self.hub.records(epoch, slot, slots, self.seed):
                self._checked(record, problems)
                if problems:
                    dropped[problems[0].reason] += 1
                else:
                    yield index, record
            return
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.shards))
        position = 0
        for shard in (self.shards[i] for i in order):
            with open(shard, encoding="utf-8", errors="replace") as lines:
                for number, line in enumerate(lines, 1):
                    if not line.strip():
                        continue
                    position += 1
                    if (position - 1) % slots != slot:
                        continue
                    record = self._record(shard, number, line)
                    if record is not None:
                        yield position - 1, record
                    else:
                        dropped["manifest error"] += 1

    def _record(self, shard: str, number: int, line: str) -> dict[str, Any] | None:
        where, problems = f"{shard}:{number}", []
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            problems.append(Problem(where, "<json>", f"malformed JSON ({err.msg})"))
            row = None
        record = None
        if isinstance(row, dict):
            record = _record_from_row(self.formats[shard], row, Path(shard).parent, where, problems)
        elif row is not None:
            problems.append(Problem(where, "<json>", f"expected an object, got {type(row).__name__}"))
        return self._checked(record.to_dict() if record else None, problems)

    def _checked(self, record: dict[str, Any] | None, problems: list[Problem]) -> dict[str, Any] | None:
        errors = [p for p in problems if p.severity == "error"]
        if errors and self.config.on_bad_data == "stop":
            raise DataError(f"bad training data (on_bad_data='stop'): {errors[0]}")
        for problem in errors:
            logger.warning("skipped: %s", problem)
        return record

    def _examples(self, epoch: int, slot: int, slots: int, dropped: Counter) -> Iterator[dict[str, Any]]:
        """This slot's examples with their cached-path columns (header lengths, ids), length filters applied
        (each drop counted by reason in `dropped`)."""
        for position, record in self._records(epoch, slot, slots, dropped):
            batch = {k: [v] for k, v in record.items()}
            columns = _prepare_batch(batch, [position], self.processor)
            example = {**record, **{k: v[0] for k, v in columns.items()}}
            if example.pop("error"):
                if self.config.on_bad_data == "stop":
                    raise DataError(f"{record['source']}: unreadable audio: {columns['error'][0]}")
                logger.warning("skipped %s: %s", record["source"], columns["error"][0])
                dropped["unreadable audio"] += 1
                continue
            example.pop("note")
            reason = drop_reason(
                example["num_frames"],
                text_length(example["num_tokens"]),
                example["prompt_length"] + example["num_tokens"],
                self.config,
            )
            if reason:
                dropped[reason] += 1
            else:
                yield example

    def epoch_batches(self, epoch: int, slot: int = 0, slots: int = 1) -> Iterator[list[dict[str, Any]]]:
        """One epoch of this slot's batches (examples without features), bucketed in buffers of `sort_size`."""
        buffer: list[dict[str, Any]] = []
        count, used, dropped = 0, 0, Counter()
        for example in self._examples(epoch, slot, slots, dropped):
            buffer.append(example)
            used += 1
            if len(buffer) == self.sort_size:
                yield from self._cut(buffer, epoch, slot, count)
                buffer, count = [], count + 1
        if buffer:
            yield from self._cut(buffer, epoch, slot, count)
        if dropped:
            reasons = "; ".join(f"{n} {reason}" for reason, n in dropped.most_common(MAX_PROBLEMS_SHOWN))
            log = logger.warning if epoch == 0 else logger.info
            log("stream slot %d/%d, epoch %d: %d examples used, %d dropped (%s)", slot, slots, epoch, used,
                sum(dropped.values()), reasons)  # fmt: skip

    def _cut(self, buffer: list[dict[str, Any]], epoch: int, slot: int, count: int) -> list[list[dict]]:
        lengths = np.maximum([e["num_frames"] + text_length(e["num_tokens"]) for e in buffer], 1)
        order = np.argsort(lengths, kind="stable")
        cap = self.batch_size_sample_max or len(buffer)
        bounds = cut_by_budget(lengths[order], self.budget, cap)
        batches = [[buffer[i] for i in order[start:end]] for start, end in bounds]
        rng = np.random.default_rng([self.seed, epoch, slot, count])
        return [batches[i] for i in rng.permutation(len(batches))]

    # -- iteration -------------------------------------------------------------------------------------------
    def set_skip(self, batches: int) -> None:
        """Resume: this rank's first `batches` batches were consumed before the checkpoint."""
        self.skip_batches = int(batches)

    def __iter__(self) -> Iterator[list[dict[str, Any]]]:
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        # The DataLoader takes its j-th batch from worker j % workers. Uninterrupted, batch k comes from stream
        # k % workers; resumed after N batches, the j-th batch must be batch N + j, so worker w plays stream
        # (w + N) % workers and skips that stream's share of the first N batches.
        stream = (worker + self.skip_batches) % workers
        slot, slots = self.rank * workers + stream, self.world_size * workers
        skip = max(self.skip_batches - stream + workers - 1, 0) // workers
        produced, epoch = 0, 0
        while self.epochs is None or epoch < self.epochs:
            yielded = False
            for batch in self.epoch_batches(epoch, slot, slots):
                yielded = True
                if produced < skip:
                    produced += 1
                    continue
                yield [self._featurized(example, epoch) for example in batch]
            if not yielded:
                raise DataError(f"stream slot {slot}/{slots}: no usable example in an epoch of {self.describe()}")
            epoch += 1

    def _featurized(self, example: dict[str, Any], epoch: int) -> dict[str, Any]:
        try:
            features = example_features(
                example["audio"],
                example["num_samples"],
                self.noisy,
                self.augmentation,
                epoch,
                example["index"],
                data=example.get("audio_bytes"),
            )
        except AudioError as err:
            if self.config.on_bad_data == "stop":
                raise DataError(f"{example['source']}: example {example['key']!r}: {err}") from err
            return {**example, "input_features": np.zeros((0, 0), np.float32), BAD_FIELD: f"{example['source']}: {err}"}
        ids = perturbed_ids(self.processor, self.augmentation, epoch, example["index"], example, len(features))
        return {**example, **ids, "input_features": features, BAD_FIELD: ""}


__all__ = ["StreamingBatches"]
