"""Manifests -> `datasets.Dataset` of model inputs, cached by datasets.

1. Every manifest is read and validated by `readers.read_manifest` (file:line problems, nothing silently
   dropped); the canonical records go to one JSONL file named by their content hash, which
   `datasets.load_dataset("json")` loads (the same path for JSONL, ChatML, source/target and Kaldi scp).
2. `Dataset.map` (batched, `num_proc`) reads audio (soundfile, 16 kHz mono), computes features with the
   model's feature extractor and builds `input_ids`/`labels` with exactly the training prompt of FunASR
   (`FunAsrNanoHfProcessor.build_training_example`). Its fingerprint is derived from the records and the
   processor's configuration, so a second run of the same config is a cache hit: no audio is read.
3. Length filters (guide defaults: 2000 fbank frames, 200 target tokens) drop examples by reason, counted
   and reported.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch

from ..errors import AudioError, DataError
from .audio import fbank_frames, load_audio
from .readers import read_manifests

logger = logging.getLogger(__name__)

FEATURIZE_VERSION = "2"  # bump when the featurisation code changes what it writes


@dataclass
class DataConfig:
    """Data options with FunASR's fine-tuning guide names and defaults."""

    max_source_length: int = 2000  # 10 ms fbank frames (= FunASR speech_length)
    max_target_length: int = 200  # tokens of the transcript + <|im_end|>
    min_source_length: int = 10
    num_proc: int = 1
    on_bad_data: str = "stop"  # "stop": refuse to train on manifests with errors; "skip": drop them, counted
    cache_dir: str | None = None

    def __post_init__(self):
        if self.on_bad_data not in ("stop", "skip"):
            raise ValueError(f"on_bad_data must be 'stop' or 'skip', got {self.on_bad_data!r}")


@dataclass
class DataReport:
    """What happened to every input record."""

    read: int = 0
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)

    def format(self) -> str:
        lines = [f"records read: {self.read}, kept: {self.kept}"]
        lines += [f"  dropped ({reason}): {count}" for reason, count in sorted(self.dropped.items())]
        lines += [f"  {problem}" for problem in self.problems[:50]]
        if len(self.problems) > 50:
            lines.append(f"  ... and {len(self.problems) - 50} more problems")
        return "\n".join(lines)


def _cache_root(config: DataConfig) -> Path:
    root = Path(config.cache_dir or Path(datasets.config.HF_DATASETS_CACHE) / "funasr_nano_hf")
    root.mkdir(parents=True, exist_ok=True)
    return root


def load_records(
    manifests: list[str], config: DataConfig, text_files: list[str | None] | None = None
) -> tuple[datasets.Dataset, DataReport]:
    """Read + validate manifests, then load the canonical records through `load_dataset("json")`."""
    report = DataReport()
    result = read_manifests(manifests, text_files)
    errors = [p for p in result.problems if p.severity == "error"]
    report.problems += [str(p) for p in result.problems]
    report.dropped["manifest error"] += len(errors)
    report.read = len(result.records) + len(errors)
    records = [r.to_dict() for r in result.records]
    if report.dropped["manifest error"] and config.on_bad_data == "stop":
        raise DataError("bad training data (on_bad_data='stop'):\n" + report.format())
    if not records:
        raise DataError("no usable records in " + ", ".join(manifests) + "\n" + report.format())
    payload = "\n".join(json.dumps(r, ensure_ascii=False, sort_keys=True) for r in records) + "\n"
    path = _cache_root(config) / "manifests" / f"{hashlib.sha256(payload.encode()).hexdigest()[:20]}.jsonl"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(payload, encoding="utf-8")
        tmp.replace(path)
    dataset = datasets.load_dataset(
        "json", data_files=str(path), split="train", cache_dir=str(_cache_root(config) / "datasets")
    )
    return dataset, report


def _featurize_batch(batch: dict[str, list], processor, worker: bool = False) -> dict[str, list]:
    if worker:
        # A forked worker must not enter the OpenMP pool inherited from the parent (libgomp is not
        # fork-safe: the fbank kernels deadlock). One thread per worker; the workers are the parallelism.
        torch.set_num_threads(1)
    out: dict[str, list] = {
        k: []
        for k in ("input_features", "input_ids", "labels", "prompt_length", "num_frames", "num_tokens", "error", "note")
    }
    extractor = processor.feature_extractor
    empty = np.zeros((0, extractor.feature_size * extractor.num_frames_lfr), dtype=np.float32)
    for audio, text, prompt in zip(batch["audio"], batch["text"], batch["prompt"]):
        try:
            waveform, info = load_audio(audio, target_sr=processor.feature_extractor.sampling_rate)
            example = processor.build_training_example(waveform, text, prompt)
        except AudioError as err:
            example, waveform = None, None
            out["error"].append(str(err))
            out["note"].append("")
        else:
            out["error"].append("")
            notes = [f"resampled from {info.original_sr} Hz"] * info.resampled + [f"downmixed {info.channels} channels"] * info.downmixed
            out["note"].append("; ".join(notes))
        out["input_features"].append(example["input_features"] if example else empty)
        out["input_ids"].append(example["input_ids"] if example else [])
        out["labels"].append(example["labels"] if example else [])
        out["prompt_length"].append(example["prompt_length"] if example else 0)
        out["num_frames"].append(fbank_frames(len(waveform)) if example else 0)
        out["num_tokens"].append(len(example["input_ids"]) - example["prompt_length"] if example else 0)
    return out


def _processor_fingerprint(processor) -> str:
    tokenizer = processor.tokenizer
    state = {
        "feature_extractor": processor.feature_extractor.to_dict(),
        "audio_token": processor.audio_token,
        "audio_token_rule": processor.audio_token_rule,
        "vocab": hashlib.sha256(json.dumps(tokenizer.get_vocab(), sort_keys=True).encode()).hexdigest(),
        "version": FEATURIZE_VERSION,
    }
    return hashlib.sha256(json.dumps(state, sort_keys=True, default=str).encode()).hexdigest()[:16]


def featurize(
    dataset: datasets.Dataset, processor, config: DataConfig, report: DataReport | None = None
) -> tuple[datasets.Dataset, DataReport]:
    """Audio -> features + prompt/label ids (cached), then the length filters (counted by reason)."""
    report = report or DataReport(read=len(dataset))
    fingerprint = hashlib.sha256(f"{dataset._fingerprint}-{_processor_fingerprint(processor)}".encode()).hexdigest()[:16]
    features = datasets.Features(
        {
            **dataset.features,
            "input_features": datasets.List(datasets.List(datasets.Value("float32"))),
            "input_ids": datasets.List(datasets.Value("int32")),
            "labels": datasets.List(datasets.Value("int32")),
            "prompt_length": datasets.Value("int32"),
            "num_frames": datasets.Value("int32"),
            "num_tokens": datasets.Value("int32"),
            "error": datasets.Value("string"),
            "note": datasets.Value("string"),
        }
    )
    featurised = dataset.map(
        _featurize_batch,
        features=features,
        batched=True,
        batch_size=16,
        num_proc=config.num_proc if config.num_proc > 1 else None,
        fn_kwargs={"processor": processor, "worker": config.num_proc > 1},
        new_fingerprint=fingerprint,
        desc="featurising audio",
    )
    # Reasons are computed once (vectorised over columns) so that every dropped row is counted.
    errors, frames, tokens = featurised["error"], featurised["num_frames"], featurised["num_tokens"]
    reasons: list[str] = []
    for error, n_frames, n_tokens in zip(errors, frames, tokens):
        if error:
            reasons.append("unreadable audio")
        elif n_frames > config.max_source_length:
            reasons.append(f"audio longer than max_source_length={config.max_source_length} frames")
        elif n_frames < config.min_source_length:
            reasons.append(f"audio shorter than min_source_length={config.min_source_length} frames")
        elif n_tokens > config.max_target_length:
            reasons.append(f"transcript longer than max_target_length={config.max_target_length} tokens")
        else:
            reasons.append("")
    for row, (reason, error) in enumerate(zip(reasons, errors)):
        if reason:
            report.dropped[reason] += 1
            if error:
                report.problems.append(f"error: {featurised[row]['source']}: audio: {error}")
    for row, note in enumerate(featurised["note"]):
        if note:
            report.problems.append(f"warning: {featurised[row]['source']}: audio: {note}")
    keep = [i for i, reason in enumerate(reasons) if not reason]
    if any(errors) and config.on_bad_data == "stop":
        raise DataError("unreadable audio (on_bad_data='stop'):\n" + report.format())
    result = featurised.select(keep) if len(keep) < len(featurised) else featurised
    report.kept = len(result)
    if report.kept < len(featurised):
        logger.warning("data: %s", report.format())
    return result.remove_columns(["error", "note"]), report


def build_dataset(
    manifests: list[str], processor, config: DataConfig, text_files: list[str | None] | None = None
) -> tuple[datasets.Dataset, DataReport]:
    dataset, report = load_records(manifests, config, text_files)
    return featurize(dataset, processor, config, report)
