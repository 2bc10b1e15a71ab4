"""Manifests -> `datasets.Dataset` of model inputs, cached by datasets.

1. Every manifest is read and validated by `readers.read_manifest` (file:line problems, nothing silently
   dropped); the canonical records go to one JSONL file named by their content hash, which
   `datasets.load_dataset("json")` loads (the same path for JSONL, ChatML, source/target and Kaldi scp).
2. `Dataset.map` (batched, `num_proc`) reads audio (soundfile, 16 kHz mono), computes features with the
   model's feature extractor and builds `input_ids`/`labels` with exactly the training prompt of FunASR
   (`FunAsrNanoHfProcessor.build_training_example`, with the record's `instruction`: the user-turn text before
   the audio). Its fingerprint is derived from the records and the processor's configuration, so a second run
   of the same config is a cache hit: no audio is read.
3. Length filters (guide defaults: 2000 fbank frames, 200 target tokens) drop examples by reason, counted
   and reported in a `DataReport` (the same report as `funasr-nano-hf check-data`).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

import datasets
import numpy as np
import torch

from ..errors import AudioError, DataError
from .audio import fbank_frames, load_audio
from .readers import Problem, read_manifests
from .report import DataReport

logger = logging.getLogger(__name__)

FEATURIZE_VERSION = "3"  # bump when the featurization code changes what it writes (3: `instruction` column)
FRAMES_PER_SECOND = 100  # 10 ms fbank frames
MAX_PROBLEMS_SHOWN = 50  # problem lines in a log message or error (check-data prints them all)


@dataclass
class DataConfig:
    """How manifests become training examples, with FunASR's fine-tuning guide names and defaults.

    The fine-tuning options (`training.arguments.DataArguments`) take these fields' defaults and help texts from
    here, and `from_args` builds the config back from them, so each is defined once.
    """

    max_source_length: int = field(default=2000, metadata={"help": "10 ms fbank frames"})  # = FunASR speech_length
    max_target_length: int = field(default=200, metadata={"help": "transcript tokens"})  # + <|im_end|>
    min_source_length: int = field(default=10, metadata={"help": "10 ms fbank frames"})
    num_proc: int = field(default=1, metadata={"help": "processes for featurization (Dataset.map)"})
    # "stop": refuse to train on manifests with errors; "skip": drop them, counted
    on_bad_data: str = field(default="stop", metadata={"help": "stop | skip (skipped examples are counted)"})
    cache_dir: str | None = None  # None: funasr_nano_hf/ in the datasets cache

    # Fields whose fine-tuning option has another name (next to TrainingArguments' own worker counts).
    OPTION_NAMES: ClassVar[dict[str, str]] = {"num_proc": "feature_num_proc"}

    def __post_init__(self):
        if self.on_bad_data not in ("stop", "skip"):
            raise ValueError(f"on_bad_data must be 'stop' or 'skip', got {self.on_bad_data!r}")

    @classmethod
    def option_name(cls, name: str) -> str:
        """The fine-tuning option that holds field `name`."""
        return cls.OPTION_NAMES.get(name, name)

    @classmethod
    def from_args(cls, args: Any) -> DataConfig:
        """The config from options that carry its fields under their option names (e.g. `DataArguments`);
        fields the options do not have keep their defaults."""
        names = {f.name: cls.option_name(f.name) for f in fields(cls)}
        return cls(**{name: getattr(args, option) for name, option in names.items() if hasattr(args, option)})


def _cache_root(config: DataConfig) -> Path:
    root = Path(config.cache_dir or Path(datasets.config.HF_DATASETS_CACHE) / "funasr_nano_hf")
    root.mkdir(parents=True, exist_ok=True)
    return root


def load_records(
    manifests: list[str], config: DataConfig, text_files: list[str | None] | None = None
) -> tuple[datasets.Dataset, DataReport]:
    """Read + validate manifests, then load the canonical records through `load_dataset("json")`."""
    result = read_manifests(manifests, text_files)
    report = DataReport(manifests=list(manifests), problems=list(result.problems))
    errors = len(report.errors)
    report.read = len(result.records) + errors
    if errors:
        report.dropped["manifest error"] += errors
    records = [r.to_dict() for r in result.records]
    if errors and config.on_bad_data == "stop":
        raise DataError("bad training data (on_bad_data='stop'):\n" + report.format(MAX_PROBLEMS_SHOWN))
    if not records:
        raise DataError("no usable records in " + ", ".join(manifests) + "\n" + report.format(MAX_PROBLEMS_SHOWN))
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


def _featurize_batch(batch: dict[str, list], processor: Any, worker: bool = False) -> dict[str, list]:
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
    for audio, text, instruction in zip(batch["audio"], batch["text"], batch["instruction"]):
        try:
            waveform, info = load_audio(audio, target_sr=extractor.sampling_rate)
            example = processor.build_training_example(waveform, text, instruction)
        except AudioError as err:
            example, waveform = None, None
            out["error"].append(str(err))
            out["note"].append("")
        else:
            out["error"].append("")
            notes = [f"resampled from {info.original_sr} Hz"] * info.resampled
            notes += [f"downmixed {info.channels} channels"] * info.downmixed
            out["note"].append("; ".join(notes))
        out["input_features"].append(example["input_features"] if example else empty)
        out["input_ids"].append(example["input_ids"] if example else [])
        out["labels"].append(example["labels"] if example else [])
        out["prompt_length"].append(example["prompt_length"] if example else 0)
        out["num_frames"].append(fbank_frames(len(waveform)) if example else 0)
        out["num_tokens"].append(len(example["input_ids"]) - example["prompt_length"] if example else 0)
    return out


def _processor_fingerprint(processor: Any) -> str:
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
    dataset: datasets.Dataset, processor: Any, config: DataConfig, report: DataReport | None = None
) -> tuple[datasets.Dataset, DataReport]:
    """Audio -> features + input/label ids (cached), then the length filters (counted by reason)."""
    report = report or DataReport(read=len(dataset))
    key = f"{dataset._fingerprint}-{_processor_fingerprint(processor)}"
    fingerprint = hashlib.sha256(key.encode()).hexdigest()[:16]
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
    featurized = dataset.map(
        _featurize_batch,
        features=features,
        batched=True,
        batch_size=16,
        num_proc=config.num_proc if config.num_proc > 1 else None,
        fn_kwargs={"processor": processor, "worker": config.num_proc > 1},
        new_fingerprint=fingerprint,
        desc="featurizing audio",
    )
    # Reasons are computed once (vectorised over columns) so that every dropped row is counted.
    errors, frames, tokens = featurized["error"], featurized["num_frames"], featurized["num_tokens"]
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
    report.dropped.update(reason for reason in reasons if reason)
    notes = featurized["note"]
    if any(errors) or any(notes):
        sources = featurized["source"]
        report.problems += [Problem(source, "audio", error) for source, error in zip(sources, errors) if error]
        report.problems += [Problem(source, "audio", note, "warning") for source, note in zip(sources, notes) if note]
    if any(errors) and config.on_bad_data == "stop":
        raise DataError("unreadable audio (on_bad_data='stop'):\n" + report.format(MAX_PROBLEMS_SHOWN))
    for error, n_frames, n_tokens in zip(errors, frames, tokens):
        if not error:  # every readable clip, kept or not (as check-data measures them)
            report.measure(n_frames / FRAMES_PER_SECOND, n_tokens)
    keep = [i for i, reason in enumerate(reasons) if not reason]
    result = featurized.select(keep) if len(keep) < len(featurized) else featurized
    report.usable = len(result)
    if report.usable < len(featurized):
        logger.warning("data: %s", report.format(MAX_PROBLEMS_SHOWN))
    return result.remove_columns(["error", "note"]), report


def build_dataset(
    manifests: list[str], processor: Any, config: DataConfig, text_files: list[str | None] | None = None
) -> tuple[datasets.Dataset, DataReport]:
    """Manifests -> featurized, filtered `datasets.Dataset` and the report of what happened to every record."""
    dataset, report = load_records(manifests, config, text_files)
    return featurize(dataset, processor, config, report)
