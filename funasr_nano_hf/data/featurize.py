"""Manifests -> `datasets.Dataset` of model inputs, cached by datasets.

1. Every manifest is read and validated by `readers.read_manifest` (file:line problems, nothing silently
   dropped); the canonical records go to one JSONL file named by their content hash, which
   `datasets.load_dataset("json")` loads (the same path for JSONL, ChatML, source/target and Kaldi scp).
2. `Dataset.map` (batched, `num_proc`) reads audio (soundfile, 16 kHz mono), computes features with the
   model's feature extractor and builds `input_ids`/`labels` with exactly the training prompt of FunASR
   (`FunAsrNanoHfProcessor.build_training_example`, with the record's `instruction`: the user-turn text before
   the audio). Its fingerprint is derived from the records and the processor's configuration, so a second run
   of the same config is a cache hit: no audio is read.
3. Length filters drop examples by reason, counted and reported in a `DataReport` (the same report as
   `funasr-nano-hf check-data`). They compare what FunASR's Nano dataset compares, in its units
   (`DataConfig`): fbank frames (10 ms) and text tokens, as the `speech_length` / `text_length` FunASR's
   `scp2jsonl` writes and its index filters on; the total LLM tokens per example (`max_token_length`); and,
   for batch types length/token, fbank frames + text tokens, which FunASR's batch sampler skips beyond
   `max_token_length` (2048 when unset).
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
from .quality import check_transcript, drop_label, special_tokens_of
from .readers import Problem, read_manifests
from .report import DataReport

logger = logging.getLogger(__name__)

FEATURIZE_VERSION = "4"  # bump when the featurization code changes what it writes (4: quality checks)
FRAMES_PER_SECOND = 100  # 10 ms fbank frames
BATCH_TYPES = ("example", "length", "token")
# FunASR's defaults for an unset `max_token_length`: the Nano dataset's (LLM tokens per example) and the
# length/token batch samplers' (fbank frames + text tokens per example).
FUNASR_MAX_TOKEN_LENGTH = 1500
FUNASR_SAMPLER_MAX_TOKEN_LENGTH = 2048
MAX_PROBLEMS_SHOWN = 50  # problem lines in a log message or error (check-data prints them all)


@dataclass
class DataConfig:
    """How manifests become training examples, with FunASR's fine-tuning guide names and defaults.

    The length limits are FunASR's `dataset_conf` keys, compared in FunASR's units. FunASR applies one key in
    two places, with different units: its index filter (at load, on the manifest's `speech_length` in 10 ms fbank
    frames and `text_length` in text tokens) and the dataset's `__getitem__` (on LFR frames of 60 ms, and on the
    tokens of transcript + `<|im_end|>`, where it only logs). With one value for both, the index filter is the
    one that drops (N fbank frames are a sixth of N LFR frames), so `max_source_length` 2000 (the guide's
    default) drops clips over 20 s in FunASR, and here. The lengths are measured from the audio and the
    tokenizer, with the formulas of FunASR's `scp2jsonl` (so they equal the manifest's for a manifest it wrote).

    The fine-tuning options (`training.arguments.DataArguments`) take these fields' defaults and help texts from
    here, and `from_args` builds the config back from them, so each is defined once.
    """

    max_source_length: int = field(
        default=2000, metadata={"help": "fbank frames (10 ms): longer clips are dropped (2000 = 20 s, FunASR's unit)"}
    )
    max_target_length: int = field(
        default=200, metadata={"help": "text tokens of the transcript (without <|im_end|>): longer ones are dropped"}
    )
    min_source_length: int = field(default=10, metadata={"help": "fbank frames (10 ms): shorter clips are dropped"})
    max_token_length: int | None = field(
        default=None,
        metadata={
            "help": "LLM tokens per example (prompt + audio placeholders + transcript); with batch_type length/token "
            "also fbank frames + text tokens per example (FunASR's sampler). Unset: FunASR's defaults, 1500 and 2048"
        },
    )
    batch_type: str = field(
        default="example",
        metadata={"help": "example | length | token (length/token: --batch_size is a padded budget, as in FunASR)"},
    )
    num_proc: int = field(default=1, metadata={"help": "processes for featurization (Dataset.map)"})
    # "stop": refuse to train on manifests with errors; "skip": drop them, counted
    on_bad_data: str = field(default="stop", metadata={"help": "stop | skip (skipped examples are counted)"})
    cache_dir: str | None = None  # None: funasr_nano_hf/ in the datasets cache

    # Fields whose fine-tuning option has another name (next to TrainingArguments' own worker counts).
    OPTION_NAMES: ClassVar[dict[str, str]] = {"num_proc": "feature_num_proc"}

    def __post_init__(self):
        if self.on_bad_data not in ("stop", "skip"):
            raise ValueError(f"on_bad_data must be 'stop' or 'skip', got {self.on_bad_data!r}")
        if self.batch_type not in BATCH_TYPES:
            raise ValueError(f"batch_type must be one of {list(BATCH_TYPES)}, got {self.batch_type!r}")
        for name in ("max_source_length", "max_target_length", "min_source_length", "max_token_length"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise ValueError(f"{name} must be a non-negative integer, got {value!r}")

    @property
    def token_limit(self) -> int:
        """LLM tokens per example beyond which FunASR's dataset refuses the example (`max_token_length`)."""
        return FUNASR_MAX_TOKEN_LENGTH if self.max_token_length is None else self.max_token_length

    @property
    def source_limit(self) -> int | None:
        """fbank frames + text tokens beyond which FunASR's length/token sampler skips an example; None for
        batch_type example (FunASR's example sampler filters only when `max_token_length` is set)."""
        if self.batch_type == "example":
            return self.max_token_length
        return FUNASR_SAMPLER_MAX_TOKEN_LENGTH if self.max_token_length is None else self.max_token_length

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
    errors = result.rejected
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
    special = special_tokens_of(processor.tokenizer) | {processor.audio_token}
    empty = np.zeros((0, extractor.feature_size * extractor.num_frames_lfr), dtype=np.float32)
    for audio, text, instruction in zip(batch["audio"], batch["text"], batch["instruction"]):
        try:
            waveform, info = load_audio(audio, target_sr=extractor.sampling_rate)
            check_transcript(audio, text, special)  # special tokens: refused (the audio was checked by load_audio)
            example = processor.build_training_example(waveform, text, instruction)
        except AudioError as err:
            example, waveform = None, None
            out["error"].append(str(err))
            out["note"].append("")
        else:
            out["error"].append("")
            notes = list(info.warnings) + [f"resampled from {info.original_sr} Hz"] * info.resampled
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


def text_length(num_tokens: int) -> int:
    """FunASR's `text_length` (tokens of the transcript) from our `num_tokens` (transcript + `<|im_end|>`)."""
    return max(int(num_tokens) - 1, 0)


def source_lengths(dataset: datasets.Dataset) -> list[int]:
    """FunASR's `source_len` per example, fbank frames + text tokens: what its length/token batching budgets."""
    return [int(f) + text_length(t) for f, t in zip(dataset["num_frames"], dataset["num_tokens"])]


def drop_reason(fbank_frames: int, text_tokens: int, llm_tokens: int, config: DataConfig) -> str:
    """Why FunASR's Nano pipeline would not train on an example with these lengths ("" = it would), checked
    in its order: the index filter, the dataset's token limit, the batch sampler's limit."""
    if fbank_frames > config.max_source_length:
        return f"audio longer than max_source_length={config.max_source_length} fbank frames (10 ms)"
    if fbank_frames < config.min_source_length:
        return f"audio shorter than min_source_length={config.min_source_length} fbank frames (10 ms)"
    if text_tokens > config.max_target_length:
        return f"transcript longer than max_target_length={config.max_target_length} text tokens"
    if llm_tokens > config.token_limit:
        default = " (FunASR's default)" if config.max_token_length is None else ""
        return (
            f"example longer than max_token_length={config.token_limit}{default} LLM tokens "
            "(prompt + audio placeholders + transcript)"
        )
    source_limit = config.source_limit
    if source_limit is not None and fbank_frames + text_tokens > source_limit:
        default = " (FunASR's default for its length/token sampler)" if config.max_token_length is None else ""
        return (
            f"fbank frames + text tokens over max_token_length={source_limit}{default}, "
            f"which FunASR's {config.batch_type} batch sampler skips"
        )
    return ""


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
    prompts = featurized["prompt_length"]
    reasons = [
        drop_label(error) if error else drop_reason(n_frames, text_length(n_tokens), n_prompt + n_tokens, config)
        for error, n_frames, n_tokens, n_prompt in zip(errors, frames, tokens, prompts)
    ]
    report.dropped.update(reason for reason in reasons if reason)
    notes = featurized["note"]
    if any(errors) or any(notes):
        sources = featurized["source"]
        report.problems += [Problem(source, "audio", error) for source, error in zip(sources, errors) if error]
        report.problems += [Problem(source, "audio", note, "warning") for source, note in zip(sources, notes) if note]
    if any(errors) and config.on_bad_data == "stop":
        raise DataError("unusable audio or transcript (on_bad_data='stop'):\n" + report.format(MAX_PROBLEMS_SHOWN))
    for error, n_frames, n_tokens in zip(errors, frames, tokens):
        if not error:  # every readable clip, kept or not (as check-data measures them)
            report.measure(n_frames / FRAMES_PER_SECOND, text_length(n_tokens))
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
