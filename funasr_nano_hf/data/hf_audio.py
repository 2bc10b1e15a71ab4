"""Training examples from a `datasets.Dataset` / `DatasetDict` with an `Audio` column (e.g. a hub dataset).

The Audio column is cast to ``Audio(decode=False)``: datasets hands over the encoded file (``bytes``) or its
``path`` without decoding it (no torchcodec needed); the records keep both, and soundfile reads the bytes (or the
file) exactly where it reads a manifest's audio, so every later step -- header lengths, prompt ids, filters,
features on the fly or precomputed -- is the manifest path's (`featurize.featurize`).
"""

from __future__ import annotations

import os
from typing import Any

import datasets

from .augmentation import Augmentation
from .featurize import DataConfig, featurize
from .report import DataReport

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


def _records(batch: dict[str, list], indices: list[int], audio: str, text: str, key: str | None, name: str) -> dict:
    out: dict[str, list] = {k: [] for k in RECORD_FEATURES}
    for i, value, transcript, example_key in zip(
        indices, batch[audio], batch[text], batch[key] if key else [None] * len(indices)
    ):
        path, data = (value or {}).get("path") or f"{name}[{i}]", (value or {}).get("bytes")
        if data is None and not os.path.isfile(path):
            data = b""  # neither bytes nor a file: unreadable, counted and named by the header read
        out["key"].append(str(example_key) if example_key is not None else f"{name}-{i}")
        out["audio"].append(path)
        out["audio_bytes"].append(data)
        out["text"].append((transcript or "").strip())
        out["instruction"].append(None)
        out["speech_length"].append(None)
        out["source"].append(f"{name}[{i}]")
    return out


def records_from_hf(
    dataset: datasets.Dataset | datasets.DatasetDict,
    *,
    split: str = "train",
    audio_column: str = "audio",
    text_column: str = "text",
    key_column: str | None = None,
) -> datasets.Dataset:
    """The dataset's examples as this package's records (key, audio path and/or bytes, transcript, source)."""
    if isinstance(dataset, datasets.DatasetDict):
        if split not in dataset:
            raise ValueError(f"split {split!r} not in the DatasetDict (splits: {sorted(dataset)})")
        dataset = dataset[split]
    missing = [c for c in (audio_column, text_column, key_column) if c and c not in dataset.column_names]
    if missing:
        raise ValueError(f"columns {missing} not in the dataset (columns: {dataset.column_names})")
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
