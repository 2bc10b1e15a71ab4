"""Training examples from a `datasets` input with an `Audio` column (e.g. a hub dataset).

The Audio column is cast to ``Audio(decode=False)``: datasets hands over the encoded file (``bytes``) or its
``path`` without decoding it (no torchcodec needed); the records keep both, and soundfile reads the bytes (or the
file) exactly where it reads a manifest's audio. One rule turns a row into a record (`record_from_row`), for both
kinds of input:

* a map-style `datasets.Dataset` / `DatasetDict` (`build_dataset_from_hf`): every later step -- header lengths,
  prompt ids, filters, features on the fly or precomputed -- is the manifest path's (`featurize.featurize`);
* a `datasets.IterableDataset` / `IterableDatasetDict` (``load_dataset(..., streaming=True)``): `HubStream` is
  the record source of `streaming.StreamingBatches.from_datasets` (token-budget batches, as ``--streaming``).
  datasets does the reading, the per-epoch shuffle (``shuffle(seed, buffer_size)`` + ``set_epoch``) and the split
  (``split_dataset_by_node`` over the stream slots: whole shards per slot when they divide evenly, else one
  example in S); iteration goes through ``IterableDataset.iter``, which does not split by DataLoader worker again
  (plain ``for row in ds`` inside a worker would).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from typing import Any

import datasets
from datasets.distributed import split_dataset_by_node

from .augmentation import Augmentation
from .featurize import DataConfig, featurize
from .readers import Problem
from .report import DataReport

ROWS_PER_READ = 32  # rows datasets hands over per `iter` call (a read granularity, not a training batch)
SHUFFLE_BUFFER_SIZE = 1000  # datasets' `IterableDataset.shuffle` default: rows mixed per epoch

RECORD_FEATURES = datasets.Features(
    {
        "key": datasets.Value("string"),
        "audio": datasets.Value("string"),
        "audio_bytes": datasets.Value("binary"),
        "text": datasets.Value("string"),
        "instruction": datasets.Value("string"),
        "speech_length": datasets.Value("int64"),
        "source": datasets.Value("string"),
    }
)


def record_from_row(value: Any, transcript: Any, key: Any, name: str, position: str) -> dict[str, Any]:
    """One row of a `datasets` input as this package's record (the one row -> record rule, map-style and stream):
    the Audio value (``Audio(decode=False)``: ``bytes`` and/or ``path``), the transcript stripped, the key from
    the key column else `position`. Neither bytes nor a readable file: empty bytes, which the header read names
    as unreadable audio."""
    value = value if isinstance(value, dict) else {"path": value} if isinstance(value, str) else {}
    path, data = value.get("path") or f"{name}[{position}]", value.get("bytes")
    if data is None and not os.path.isfile(path):
        data = b""
    return {
        "key": str(key) if key is not None else f"{name}-{position}",
        "audio": path,
        "audio_bytes": data,
        "text": str(transcript or "").strip(),
        "instruction": None,
        "speech_length": None,
        "source": f"{name}[{position}]",
    }


def _records(batch: dict[str, list], indices: list[int], audio: str, text: str, key: str | None, name: str) -> dict:
    out: dict[str, list] = {k: [] for k in RECORD_FEATURES}
    keys = batch[key] if key else [None] * len(indices)
    for i, value, transcript, example_key in zip(indices, batch[audio], batch[text], keys):
        for column, item in record_from_row(value, transcript, example_key, name, str(i)).items():
            out[column].append(item)
    return out


def _split(dataset: Any, split: str) -> Any:
    """The `split` of a DatasetDict / IterableDatasetDict, else the dataset itself."""
    if isinstance(dataset, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        if split not in dataset:
            raise ValueError(f"split {split!r} not in the {type(dataset).__name__} (splits: {sorted(dataset)})")
        return dataset[split]
    return dataset


def _check_columns(columns: list[str] | None, audio: str, text: str, key: str | None) -> None:
    missing = [c for c in (audio, text, key) if c and columns is not None and c not in columns]
    if missing:
        raise ValueError(
            f"columns {missing} not in the dataset (columns: {columns}): pass audio_column=, text_column=, "
            "key_column= with the dataset's names"
        )


def records_from_hf(
    dataset: datasets.Dataset | datasets.DatasetDict,
    *,
    split: str = "train",
    audio_column: str = "audio",
    text_column: str = "text",
    key_column: str | None = None,
) -> datasets.Dataset:
    """The dataset's examples as this package's records (key, audio path and/or bytes, transcript, source)."""
    dataset = _split(dataset, split)
    if isinstance(dataset, datasets.IterableDataset):
        raise TypeError(
            "a datasets.IterableDataset (load_dataset(..., streaming=True)) has no rows to map: train on it as a "
            "stream, funasr_nano_hf.data.streaming.StreamingBatches.from_datasets(dataset, processor, config, "
            "batch_size=...) as the Trainer's train_dataset (with max_steps), or load it without streaming=True"
        )
    _check_columns(dataset.column_names, audio_column, text_column, key_column)
    dataset = dataset.cast_column(audio_column, datasets.Audio(decode=False))
    name = dataset.info.dataset_name or split
    records = dataset.map(
        _records,
        batched=True,
        with_indices=True,
        remove_columns=dataset.column_names,
        features=RECORD_FEATURES,
        fn_kwargs={"audio": audio_column, "text": text_column, "key": key_column, "name": name},
        desc="records from the Audio column",
    )
    empty = [i for i, text in enumerate(records["text"]) if not text]
    if empty:
        raise ValueError(f"{len(empty)} empty transcripts in {text_column!r}, e.g. row {empty[0]}: drop them first")
    return records


def build_dataset_from_hf(
    dataset: datasets.Dataset | datasets.DatasetDict,
    processor: Any,
    config: DataConfig,
    *,
    split: str = "train",
    audio_column: str = "audio",
    text_column: str = "text",
    key_column: str | None = None,
    precompute_features: bool | None = None,
    augmentation: Augmentation | None = None,
) -> tuple[datasets.Dataset, DataReport]:
    """`build_dataset` for a `datasets` input: training examples and the report of what happened to each row."""
    records = records_from_hf(
        dataset, split=split, audio_column=audio_column, text_column=text_column, key_column=key_column
    )
    report = DataReport(manifests=[f"<datasets:{records.info.dataset_name or split}>"], read=len(records))
    return featurize(
        records, processor, config, report, precompute_features=precompute_features, augmentation=augmentation
    )


def stable_index(key: str) -> int:
    """A 63-bit example index from the example's key: a stream example's identity for its augmentation seed
    (a split stream has no global row number)."""
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") >> 1


class HubStream:
    """A `datasets.IterableDataset` as a record source for `StreamingBatches` (see the module docstring)."""

    def __init__(
        self,
        dataset: datasets.IterableDataset | datasets.IterableDatasetDict,
        *,
        split: str = "train",
        audio_column: str = "audio",
        text_column: str = "text",
        key_column: str | None = None,
        shuffle_buffer_size: int = SHUFFLE_BUFFER_SIZE,
    ) -> None:
        dataset = _split(dataset, split)
        if not isinstance(dataset, datasets.IterableDataset):
            raise TypeError(
                f"expected a datasets.IterableDataset (load_dataset(..., streaming=True)), got {type(dataset).__name__}"
                ": a map-style Dataset trains through build_dataset_from_hf"
            )
        if dataset.features is None:  # e.g. a streamed JSON file: datasets reads the first rows to type them
            dataset = dataset._resolve_features()  # (datasets' own step before a cast; no public name for it)
        _check_columns(dataset.column_names, audio_column, text_column, key_column)
        self.dataset = dataset.cast_column(audio_column, datasets.Audio(decode=False))
        self.audio_column, self.text_column, self.key_column = audio_column, text_column, key_column
        self.name = dataset.info.dataset_name or split
        self.shuffle_buffer_size = int(shuffle_buffer_size)

    def describe(self) -> str:
        return f"<datasets stream {self.name!r}, {self.dataset.num_shards} shards>"

    def records(
        self, epoch: int, slot: int, slots: int, seed: int
    ) -> Iterator[tuple[int, dict[str, Any], list[Problem]]]:
        """This slot's (index, record, problems) for `epoch`: the epoch's shuffle is the same in every slot, so
        the slots' splits partition it."""
        stream = self.dataset
        if self.shuffle_buffer_size > 0:
            stream = stream.shuffle(seed=seed, buffer_size=self.shuffle_buffer_size)
        stream = split_dataset_by_node(stream, rank=slot, world_size=slots)
        stream.set_epoch(epoch)
        count = 0
        for rows in stream.iter(batch_size=ROWS_PER_READ):  # `iter`: no second split by DataLoader worker
            keys = rows[self.key_column] if self.key_column else [None] * len(rows[self.text_column])
            for value, transcript, key in zip(rows[self.audio_column], rows[self.text_column], keys):
                if key is None and isinstance(value, dict) and value.get("path"):
                    key = value["path"]  # a hub row's file name: its identity when there is no key column
                # messages name the row by its key; without one, by its place in this slot's stream
                position = str(key) if key is not None else f"slot {slot}/{slots} row {count}"
                record = record_from_row(value, transcript, key, self.name, position)
                count += 1
                problems = []
                if not record["text"]:
                    problems.append(Problem(record["source"], self.text_column, "empty or whitespace-only transcript"))
                yield stable_index(record["key"]), record, problems
