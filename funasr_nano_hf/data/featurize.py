"""Manifests -> `datasets.Dataset` of training examples: cheap parts cached by datasets, features on the fly.

1. Every manifest is read and validated by `readers.read_manifest` (file:line problems, nothing silently
   dropped); the canonical records go to one gzipped JSONL file named by their content hash, which
   `datasets.load_dataset("json")` loads (decompressed on the fly; the same path for JSONL, ChatML,
   source/target and Kaldi scp).
2. `prepare` (`Dataset.map`, batched, `num_proc`, cached) computes what is cheap and worth keeping, and only
   that (the map writes its new columns alone, joined to the records with `concatenate_datasets(axis=1)`, so
   the records are not stored twice): lengths -- the manifest's `speech_length` (FunASR's `source_len` part)
   when present, else FunASR's formula on the audio header (soundfile `info`: no decoding) -- and the token
   counts of FunASR's training prompt (`prompt_length`, `num_tokens`). The ids themselves (`TrainingIds`, equal
   to `FunAsrNanoHfProcessor.build_training_ids`, audio-token count from the header's sample count) are built
   with the features: on the fly in the transform (microseconds per example), or cached with the precomputed
   features. A second run of the same config is a cache hit: no audio is touched.
3. Length filters drop examples by reason, counted and reported in a `DataReport` (the same report as
   `funasr-nano-hf check-data`). They compare what FunASR's Nano dataset compares, in its units
   (`DataConfig`): fbank frames (10 ms) and text tokens, as the `speech_length` / `text_length` FunASR's
   `scp2jsonl` writes and its index filters on; the total LLM tokens per example (`max_token_length`); and,
   for batch types length/token, fbank frames + text tokens, which FunASR's batch sampler skips beyond
   `max_token_length` (2048 when unset).
4. Features (fbank + LFR, `example_features`, one implementation) are computed either when a row is read
   (default: `FeatureTransform` via `with_transform`, so DataLoader workers parallelise it, training dither
   applied, seeded per example), or once into the cache (`precompute_features`: small sets, frozen-path
   caching), returned as numpy arrays. Audio that does not decode to the length its header promised (the ids
   were built for it) is counted and named, skipped or stopped per `on_bad_data`.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import socket
import uuid
import weakref
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

import datasets
import numpy as np
import torch

from ..errors import AudioError, DataError
from ..models import prompting
from ..models.processing_funasr_nano import audio_token_count
from .audio import audio_header, fbank_frames, kaldi_frames, load_audio
from .augmentation import (
    SPECAUG_STREAM,
    Augmentation,
    SpecAugConfig,
    example_seed,
    parse_speed_perturb,
    perturb_speed,
    seeded,
    spec_augment,
)
from .collator import BAD_FIELD
from .quality import check_transcript, drop_label, special_tokens_of
from .readers import Problem, read_manifests
from .report import DataReport

logger = logging.getLogger(__name__)

FEATURIZE_VERSION = "6"  # bump when what the featurization writes changes (6: lengths only, ids on the fly)
FRAMES_PER_SECOND = 100  # 10 ms fbank frames
BATCH_TYPES = ("example", "length", "token")
PRECOMPUTED_AUGMENTATION = (
    "--specaug / --speed_perturb augment features computed on the fly: drop --precompute_features and "
    "--cache_frozen_audio (precomputed features are cached clean), or drop the augmentation"
)
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
    precompute_features: bool = field(
        default=False,
        metadata={
            "help": "false: fbank and token ids computed per example in the DataLoader workers (--num_workers), "
            "only records and lengths cached (~0.5 MB per audio hour); true: every feature computed once into the "
            "datasets cache (~140 MB per audio hour; small sets, --cache_frozen_audio)"
        },
    )
    dither: float = field(
        default=1.0,
        metadata={
            "help": "fbank dither of training features (FunASR's frontend_conf.dither; its Nano recipe trains with "
            "the default 1.0); on-the-fly features only, seeded per (seed, epoch, example); evaluation is clean"
        },
    )
    specaug: bool = field(
        default=False,
        metadata={
            "help": "SpecAugment of training features, FunASR's SpecAugLFR (FunASR's Nano recipe has none); "
            "on-the-fly features only, seeded per (seed, epoch, example); evaluation is clean"
        },
    )
    specaug_conf: str | None = field(
        default=None,
        metadata={
            "help": "with --specaug true: FunASR's specaug_conf as JSON, e.g. '{\"num_time_mask\": 2, "
            "\"time_mask_width_range\": [0, 40]}'; unset: FunASR's SpecAugLFR recipe values (1 freq mask [0,30) "
            "x lfr_rate 6, 1 time mask [0,12), no time warp)"
        },
    )
    speed_perturb: str | None = field(
        default=None,
        metadata={
            "help": "speed factors drawn per training example and epoch, e.g. 0.9,1.0,1.1 (FunASR's speed_perturb; "
            "its Nano recipe has none); on-the-fly features only; batching keeps the unperturbed lengths"
        },
    )
    cache_dir: str | None = None  # None: funasr_nano_hf/ in the datasets cache

    # Fields whose fine-tuning option has another name (next to TrainingArguments' own worker counts).
    OPTION_NAMES: ClassVar[dict[str, str]] = {"num_proc": "feature_num_proc"}

    def __post_init__(self):
        if self.on_bad_data not in ("stop", "skip"):
            raise ValueError(f"on_bad_data must be 'stop' or 'skip', got {self.on_bad_data!r}")
        if isinstance(self.dither, bool) or not isinstance(self.dither, (int, float)) or self.dither < 0:
            raise ValueError(f"dither must be a number >= 0, got {self.dither!r}")
        SpecAugConfig.parse(self.specaug_conf)  # errors now, naming the field, not in a loader worker
        if self.specaug_conf and not self.specaug:
            raise ValueError("specaug_conf is set but specaug is off (nothing would use it): add --specaug true")
        parse_speed_perturb(self.speed_perturb)
        if self.batch_type not in BATCH_TYPES:
            raise ValueError(f"batch_type must be one of {list(BATCH_TYPES)}, got {self.batch_type!r}")
        for name in ("max_source_length", "max_target_length", "min_source_length", "max_token_length"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise ValueError(f"{name} must be a non-negative integer, got {value!r}")

    def augmentation(self, seed: int) -> Augmentation:
        """What training features get (dither, SpecAugment, speed perturbation), seeded by the run's `seed`."""
        return Augmentation(
            dither=self.dither,
            seed=seed,
            specaug=SpecAugConfig.parse(self.specaug_conf) if self.specaug else None,
            speed_perturb=parse_speed_perturb(self.speed_perturb),
        )

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
    payload = ("\n".join(json.dumps(r, ensure_ascii=False, sort_keys=True) for r in records) + "\n").encode()
    # gzipped: the records' text is also in the Arrow table load_dataset builds; this copy only names the cache
    path = _cache_root(config) / "manifests" / f"{hashlib.sha256(payload).hexdigest()[:20]}.jsonl.gz"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        # a unique staging name per process: several ranks/nodes on one shared filesystem may write it at once
        tmp = path.with_name(f"{path.name}.{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
        tmp.write_bytes(gzip.compress(payload, compresslevel=6, mtime=0))
        tmp.replace(path)
    dataset = datasets.load_dataset(
        "json", data_files=str(path), split="train", cache_dir=str(_cache_root(config) / "datasets")
    )
    return dataset, report


class TrainingIds:
    """`processor.build_training_ids` for many examples at once, equal to it id for id: the transcripts in one
    batched call of the fast tokenizer, each instruction's prompt encoded once with ONE audio placeholder and
    expanded (the placeholder is an added token, which the tokenizer splits on before anything else, so N of
    them encode as N copies of its id). A prompt that does not encode so, or a clip with no audio token, goes
    through the processor itself."""

    def __init__(self, processor: Any):
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.audio_id = self.tokenizer.convert_tokens_to_ids(processor.audio_token)
        self.end = self.tokenizer.encode(prompting.target_text(""), add_special_tokens=False)
        self.prompts: dict[str | None, tuple[list[int], list[int]] | None] = {}

    def _prompt(self, instruction: str | None) -> tuple[list[int], list[int]] | None:
        """(ids before, ids after) the audio placeholder of `instruction`'s prompt; None: no single placeholder."""
        key = instruction or None
        if key not in self.prompts:
            text = self.processor.transcription_prompt(instruction=instruction or prompting.instruction())
            ids = self.tokenizer.encode(text, add_special_tokens=False)
            at = [i for i, token in enumerate(ids) if token == self.audio_id]
            self.prompts[key] = (ids[: at[0]], ids[at[0] + 1 :]) if len(at) == 1 else None
        return self.prompts[key]

    def _layout(self, instruction: str | None, frames: int) -> tuple[list[int], int, list[int]] | None:
        """(prompt ids before the audio, audio-token count, prompt ids after) of an example with `frames` LFR
        frames; None where the processor builds the ids itself (no single placeholder, or no audio token)."""
        parts, count = self._prompt(instruction), int(audio_token_count(int(frames), self.processor.audio_token_rule))
        return None if parts is None or count == 0 else (parts[0], count, parts[1])

    def targets(self, texts: list[str]) -> list[list[int]]:
        """Transcript + `<|im_end|>` ids (special tokens typed in a transcript stay text, as in the processor)."""
        if not texts:
            return []
        encoded = self.tokenizer(list(texts), add_special_tokens=False, split_special_tokens=True)["input_ids"]
        return [list(ids) + self.end for ids in encoded]

    def lengths(self, texts: list[str], instructions: list[str | None], frames: list[int]) -> tuple[list, list]:
        """(prompt_length, num_tokens) per example, `frames` its LFR frames: what batching and filters need."""
        prompts, tokens = [], []
        for target, instruction, n_frames in zip(self.targets(texts), instructions, frames):
            layout = self._layout(instruction, n_frames)
            if layout is None:
                prompts.append(self.processor.build_training_ids(n_frames, "", instruction)["prompt_length"])
            else:
                prompts.append(len(layout[0]) + layout[1] + len(layout[2]))
            tokens.append(len(target))
        return prompts, tokens

    def build(self, texts: list[str], instructions: list[str | None], frames: list[int]) -> list[dict[str, Any]]:
        """`build_training_ids(frames, text, instruction)` per example: input_ids, labels, prompt_length."""
        out = []
        for text, target, instruction, n_frames in zip(texts, self.targets(texts), instructions, frames):
            layout = self._layout(instruction, n_frames)
            if layout is None:
                out.append(self.processor.build_training_ids(n_frames, text, instruction))
                continue
            before, count, after = layout
            source = before + [self.audio_id] * count + after
            out.append(
                {"input_ids": source + target, "labels": [-100] * len(source) + target, "prompt_length": len(source)}
            )
        return out


_TRAINING_IDS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def single_threaded_tokenizer() -> None:
    """In a forked worker: no tokenizer thread pool. A child inherits the parent's pool broken, and with
    TOKENIZERS_PARALLELISM=true (which stops `tokenizers` from switching it off after a fork) the first batched
    tokenizer call hangs; the workers tokenise a batch of transcripts at a time, a pool gains nothing there."""
    os.environ["TOKENIZERS_PARALLELISM"] = "false"


# The process that imported this module; any other pid here is a forked child of it (a DataLoader worker or a
# `Dataset.map` worker), which inherited the tokenizer's thread pool broken.
_IMPORTING_PID = os.getpid()


def training_ids(processor: Any) -> TrainingIds:
    """The processor's `TrainingIds` (one per processor and process: its prompts are encoded once). Every path
    that tokenises examples gets it here first, so in a forked worker this is where the tokenizer's thread pool is
    turned off (`single_threaded_tokenizer`), before the worker's first tokenizer call."""
    if os.getpid() != _IMPORTING_PID:
        single_threaded_tokenizer()
    if processor not in _TRAINING_IDS:
        _TRAINING_IDS[processor] = TrainingIds(processor)
    return _TRAINING_IDS[processor]


LENGTH_COLUMNS = ("index", "num_samples", "num_frames", "prompt_length", "num_tokens")


def _prepare_lengths(
    batch: dict[str, list], indices: list[int], processor: Any, worker: bool = False, with_ids: bool = False
) -> dict[str, list]:
    """The cheap, cached part of an example: lengths from the manifest or the audio header (no decoding) and the
    prompt/transcript token counts, whose audio-token count follows from the header's sample count; `error`
    and `note` per row (unreadable audio, refused transcript; resampled/downmixed). `with_ids`: the prompt/label
    ids too (`input_ids`, `labels`; [] where the audio is unreadable), the counts taken from them."""
    if worker:
        torch.set_num_threads(1)  # forked map workers: no inherited OpenMP pool (libgomp is not fork-safe)
    out: dict[str, list] = {k: [] for k in (*LENGTH_COLUMNS, "error", "note")}
    extractor = processor.feature_extractor
    special = special_tokens_of(processor.tokenizer) | {processor.audio_token}
    good: list[int] = []  # rows whose header was read: their token counts are computed in one batch
    rows = zip(indices, batch["audio"], _bytes(batch), batch["text"], batch["speech_length"])
    for row, (index, audio, data, text, speech_length) in enumerate(rows):
        try:
            check_transcript(audio, text, special)  # special tokens: refused, never control tokens
            info = audio_header(audio, target_sr=extractor.sampling_rate, data=data)
        except AudioError as err:
            info, error = None, str(err)
        else:
            error = ""
        out["index"].append(index)
        out["error"].append(error)
        if info is None:
            out["note"].append("")
            for name in LENGTH_COLUMNS[1:]:
                out[name].append(0)
            continue
        good.append(row)
        notes = [f"resampled from {info.original_sr} Hz"] * info.resampled
        notes += [f"downmixed {info.channels} channels"] * info.downmixed
        out["note"].append("; ".join(notes))
        out["num_samples"].append(info.num_samples)
        # FunASR batches and filters on the manifest's speech_length; without one, its formula on the header
        manifest = isinstance(speech_length, int) and not isinstance(speech_length, bool) and speech_length > 0
        out["num_frames"].append(speech_length if manifest else fbank_frames(info.num_samples))
        out["prompt_length"].append(0)  # set below, for the whole batch at once
        out["num_tokens"].append(0)
    frames = [lfr_frames(out["num_samples"][row], extractor) for row in good]
    texts, instructions = [batch["text"][row] for row in good], [batch["instruction"][row] for row in good]
    if not with_ids:
        prompts, tokens = training_ids(processor).lengths(texts, instructions, frames)
        for row, prompt, count in zip(good, prompts, tokens):
            out["prompt_length"][row], out["num_tokens"][row] = prompt, count
        return out
    out["input_ids"], out["labels"] = [[] for _ in indices], [[] for _ in indices]
    for row, ids in zip(good, training_ids(processor).build(texts, instructions, frames)):
        out["input_ids"][row], out["labels"][row] = ids["input_ids"], ids["labels"]
        out["prompt_length"][row] = ids["prompt_length"]
        out["num_tokens"][row] = len(ids["input_ids"]) - ids["prompt_length"]
    return out


def _prepare_batch(batch: dict[str, list], indices: list[int], processor: Any, worker: bool = False) -> dict[str, list]:
    """`_prepare_lengths` plus the prompt/label ids (`input_ids`, `labels`; [] where the audio is unreadable):
    every column an example needs but its features (the streaming path's examples)."""
    return _prepare_lengths(batch, indices, processor, worker, with_ids=True)


def _prepare_columns(*args: Any, names: list[str], processor: Any, worker: bool = False) -> dict[str, list]:
    """`_prepare_lengths` for `Dataset.map(input_columns=names, with_indices=True)`: only the columns it reads
    are converted from Arrow."""
    *columns, indices = args
    return _prepare_lengths(dict(zip(names, columns)), indices, processor, worker)


def _bytes(batch: dict[str, list]) -> list[bytes | None]:
    """Encoded audio per row when the records came from a `datasets` Audio column (`hf_audio`), else None."""
    return batch.get("audio_bytes") or [None] * len(batch["audio"])


def lfr_frames(num_samples: int, extractor: Any) -> int:
    """Feature (LFR) frames the extractor gives for `num_samples`: ceil(fbank frames / LFR stride)."""
    return -(-kaldi_frames(num_samples, extractor.sampling_rate) // extractor.stride_lfr)


def example_features(
    audio: str,
    num_samples: int,
    extractor: Any,
    augmentation: Augmentation | None = None,
    epoch: int = 0,
    index: int = 0,
    data: bytes | None = None,
    warnings: list[str] | None = None,
) -> np.ndarray:
    """The one featurisation of a training example, precomputed or on the fly: read (the quality checks of
    `load_audio`: errors raise, warnings such as clipping go to `warnings`), check the audio against the
    header-derived length the example's ids were built for, then under `augmentation` (training): speed
    perturbation, fbank + LFR dithered, SpecAugment (`perturbed_ids` gives the ids a perturbed clip needs)."""
    waveform, info = load_audio(audio, target_sr=extractor.sampling_rate, data=data)
    if warnings is not None:
        warnings.extend(info.warnings)
    if len(waveform) != num_samples:
        raise AudioError(
            audio,
            f"header promises {num_samples} samples at {extractor.sampling_rate} Hz, the audio decodes to "
            f"{len(waveform)} (truncated or corrupt file): re-encode it or drop it from the manifest",
        )
    if augmentation is None or not augmentation.active:
        features = extractor([waveform], sampling_rate=extractor.sampling_rate, return_tensors="np")
        return np.asarray(features["input_features"][0], dtype=np.float32)
    waveform = perturb_speed(waveform, augmentation.speed(epoch, index), extractor.sampling_rate)
    with seeded(example_seed(augmentation.seed, epoch, index)):
        features = extractor([waveform], sampling_rate=extractor.sampling_rate, return_tensors="np")
    features = np.asarray(features["input_features"][0], dtype=np.float32)
    if augmentation.specaug is not None:
        features = spec_augment(features, augmentation.specaug, augmentation.rng(epoch, index, SPECAUG_STREAM))
    return features


def perturbed_ids(
    processor: Any, augmentation: Augmentation | None, epoch: int, index: int, example: dict[str, Any], frames: int
) -> dict[str, Any]:
    """The prompt/label ids of a speed-perturbed example, rebuilt for its `frames` LFR frames (its audio-token
    count changes with its length); {} when its speed is 1 this epoch (the example's ids stand). Batching keeps the
    unperturbed lengths, as FunASR's sampler does (it batches on the manifest's lengths)."""
    if augmentation is None or not augmentation.changes_ids or augmentation.speed(epoch, index) == 1.0:
        return {}
    return processor.build_training_ids(frames, example["text"], example["instruction"])


def _features_batch(batch: dict[str, list], processor: Any, worker: bool = False) -> dict[str, list]:
    """Precomputed mode: `example_features` for a batch and the prompt/label ids (cached with them), errors
    recorded per row (counted afterwards)."""
    if worker:
        torch.set_num_threads(1)
    extractor = processor.feature_extractor
    empty = np.zeros((0, extractor.feature_size * extractor.num_frames_lfr), dtype=np.float32)
    out: dict[str, list] = {"input_features": [], "error": [], "warning": [], **_ids_of(batch, processor)}
    for audio, data, num_samples in zip(batch["audio"], _bytes(batch), batch["num_samples"]):
        warnings: list[str] = []
        try:
            out["input_features"].append(example_features(audio, num_samples, extractor, data=data, warnings=warnings))
            out["error"].append("")
        except AudioError as err:
            out["input_features"].append(empty)
            out["error"].append(str(err))
        out["warning"].append("; ".join(warnings))
    return out


def _ids_of(batch: dict[str, list], processor: Any) -> dict[str, list]:
    """`input_ids` and `labels` of a batch of prepared rows (`TrainingIds`, from their header's sample count)."""
    extractor = processor.feature_extractor
    frames = [lfr_frames(n, extractor) for n in batch["num_samples"]]
    built = training_ids(processor).build(list(batch["text"]), list(batch["instruction"]), frames)
    return {"input_ids": [ids["input_ids"] for ids in built], "labels": [ids["labels"] for ids in built]}


class FeatureTransform:
    """On-the-fly mode's `Dataset.with_transform`: features computed when a row is read, i.e. in the DataLoader
    workers (`--num_workers` parallelises it), with the prompt/label ids (not cached: building them is microseconds,
    storing them is most of the cache). Training applies `augmentation` (seeded per example and epoch,
    `set_epoch`). Unloadable audio: `on_bad_data` "stop" raises `DataError` naming the example; "skip" marks the
    row (`BAD_FIELD`), which the collator drops and the trainer counts."""

    def __init__(self, processor: Any, on_bad_data: str, augmentation: Augmentation | None = None):
        self.processor = processor
        self.extractor = processor.feature_extractor
        self.augmentation = augmentation
        self.noisy = augmentation.extractor(self.extractor) if augmentation is not None else self.extractor
        self.on_bad_data = on_bad_data
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        if "audio" not in batch or "num_samples" not in batch:
            return batch  # a column query (e.g. dataset["num_frames"]): nothing to compute
        extractor = self.noisy
        empty = np.zeros((0, extractor.feature_size * extractor.num_frames_lfr), dtype=np.float32)
        features, bad = [], []
        ids = {name: list(batch[name]) for name in ("input_ids", "labels", "prompt_length") if name in batch}
        if "input_ids" not in ids:
            ids.update(_ids_of(batch, self.processor))
        for row, (audio, data, num_samples, index, source, key) in enumerate(
            zip(batch["audio"], _bytes(batch), batch["num_samples"], batch["index"], batch["source"], batch["key"])
        ):
            warnings: list[str] = []
            try:
                features.append(
                    example_features(
                        audio, num_samples, extractor, self.augmentation, self.epoch, index, data, warnings
                    )
                )
                example = {"text": batch["text"][row], "instruction": batch["instruction"][row]}
                frames = len(features[-1])
                rebuilt = perturbed_ids(self.processor, self.augmentation, self.epoch, index, example, frames)
                for name, value in rebuilt.items():  # a speed-perturbed clip's ids, for its new length
                    ids[name][row] = value
                bad.append("")
                if warnings and self.epoch == 0:  # named when first met, not every epoch (check-data counts them)
                    logger.warning("%s: example %r: %s", source, key, "; ".join(warnings))
            except AudioError as err:
                if self.on_bad_data == "stop":
                    raise DataError(
                        f"{source}: example {key!r}: {err} (on_bad_data='stop'; --on_bad_data skip drops such "
                        "examples, counted)"
                    ) from err
                features.append(empty)
                bad.append(f"{source}: {err}")
        return {**batch, **ids, "input_features": features, BAD_FIELD: bad}


def set_epoch(dataset: Any, epoch: int) -> None:
    """Tell an on-the-fly dataset's transform which epoch starts (its augmentation is seeded per epoch)."""
    transform = getattr(dataset, "format", None) or {}
    transform = transform.get("format_kwargs", {}).get("transform")
    if isinstance(transform, FeatureTransform):
        transform.set_epoch(epoch)


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


def plain(dataset: datasets.Dataset) -> datasets.Dataset:
    """The dataset's stored columns without its format: reading a column of an on-the-fly dataset through its
    transform would compute every example's features (datasets formats a column row by row)."""
    return dataset.with_format(None) if dataset.format["type"] is not None else dataset


def columns(dataset: datasets.Dataset, *names: str) -> dict[str, np.ndarray]:
    """Whole stored columns as numpy arrays, read from Arrow in one piece (`dataset[name]` formats row by row,
    seconds per 100 000 rows), without the dataset's format or transform."""
    table = dataset.with_format("arrow", columns=list(names))[:]
    return {name: table.column(name).to_numpy(zero_copy_only=False) for name in names}


def text_lengths(num_tokens: np.ndarray) -> np.ndarray:
    """`text_length` of a whole column."""
    return np.maximum(np.asarray(num_tokens, dtype=np.int64) - 1, 0)


def source_lengths(dataset: datasets.Dataset) -> list[int]:
    """FunASR's `source_len` per example, fbank frames + text tokens: what its length/token batching budgets."""
    lengths = columns(dataset, "num_frames", "num_tokens")
    return (lengths["num_frames"].astype(np.int64) + text_lengths(lengths["num_tokens"])).tolist()


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


def dropped(
    fbank_frames: np.ndarray, text_tokens: np.ndarray, llm_tokens: np.ndarray, config: DataConfig
) -> np.ndarray:
    """Whether `drop_reason` is non-empty, for whole columns at once (the same comparisons)."""
    out = (fbank_frames > config.max_source_length) | (fbank_frames < config.min_source_length)
    out |= (text_tokens > config.max_target_length) | (llm_tokens > config.token_limit)
    if config.source_limit is not None:
        out |= fbank_frames + text_tokens > config.source_limit
    return out


def _fingerprint(*parts: str) -> str:
    return hashlib.sha256("-".join(parts).encode()).hexdigest()[:16]


def _drop_bad_rows(
    dataset: datasets.Dataset, errors: list[str], reason: str, report: DataReport, config: DataConfig
) -> list[int]:
    """Count and name the rows whose audio failed (`errors[i]` non-empty); stop under on_bad_data 'stop'."""
    if not any(errors):
        return list(range(len(dataset)))
    sources = columns(dataset, "source")["source"]
    report.problems += [Problem(source, "audio", error) for source, error in zip(sources, errors) if error]
    # the quality checks' own reasons (silence, NaN/inf, special tokens ...), else the caller's
    labels = [drop_label(error) for error in errors if error]
    report.dropped.update(label if label != "unreadable audio" else reason for label in labels)
    if config.on_bad_data == "stop":
        raise DataError("unusable audio or transcript (on_bad_data='stop'):\n" + report.format(MAX_PROBLEMS_SHOWN))
    return [i for i, error in enumerate(errors) if not error]


def _prepared_columns(dataset: datasets.Dataset, processor: Any, config: DataConfig) -> datasets.Dataset:
    """`_prepare_lengths` over the records (cached; only the new columns are written), joined to them."""
    columns_ = {
        "index": datasets.Value("int64"),
        "num_samples": datasets.Value("int64"),
        "num_frames": datasets.Value("int32"),
        "prompt_length": datasets.Value("int32"),
        "num_tokens": datasets.Value("int32"),
        "error": datasets.Value("string"),
        "note": datasets.Value("string"),
    }
    names = [n for n in ("audio", "audio_bytes", "text", "instruction", "speech_length") if n in dataset.column_names]
    lengths = dataset.map(
        _prepare_columns,
        features=datasets.Features(columns_),
        batched=True,
        batch_size=1024,
        with_indices=True,
        input_columns=names,
        remove_columns=dataset.column_names,
        num_proc=config.num_proc if config.num_proc > 1 else None,
        fn_kwargs={"names": names, "processor": processor, "worker": config.num_proc > 1},
        new_fingerprint=_fingerprint(dataset._fingerprint, _processor_fingerprint(processor), "lengths"),
        desc="reading audio headers and counting tokens",
    )
    return datasets.concatenate_datasets([dataset, lengths], axis=1)


def prepare(
    dataset: datasets.Dataset, processor: Any, config: DataConfig, report: DataReport | None = None
) -> tuple[datasets.Dataset, DataReport]:
    """Records -> lengths + prompt/transcript token counts (cached; audio headers only, nothing decoded), then
    the length filters (counted by reason)."""
    report = report or DataReport(read=len(dataset))
    prepared = _prepared_columns(dataset, processor, config)
    stored = columns(prepared, "error", "note", "num_frames", "num_tokens", "prompt_length")
    errors = stored["error"].tolist()
    keep = np.zeros(len(prepared), dtype=bool)
    keep[_drop_bad_rows(prepared, errors, "unreadable audio", report, config)] = True
    notes = stored["note"]
    if any(notes):
        sources = columns(prepared, "source")["source"]
        report.problems += [Problem(source, "audio", note, "warning") for source, note in zip(sources, notes) if note]
    frames = stored["num_frames"].astype(np.int64)
    texts = text_lengths(stored["num_tokens"])
    llm = stored["prompt_length"].astype(np.int64) + stored["num_tokens"]
    # Every dropped row is counted by its reason (`drop_reason`, asked only for the rows that fail).
    failing = dropped(frames, texts, llm, config) & keep
    reasons = {int(i): drop_reason(int(frames[i]), int(texts[i]), int(llm[i]), config) for i in np.flatnonzero(failing)}
    report.dropped.update(reasons.values())
    for seconds, label in zip((frames[keep] / FRAMES_PER_SECOND).tolist(), texts[keep].tolist()):
        report.measure(seconds, label)  # every readable clip, kept or not (as check-data measures them)
    kept = np.flatnonzero(keep & ~failing).tolist()
    result = prepared.select(kept) if len(kept) < len(prepared) else prepared
    report.usable = len(result)
    return result.remove_columns(["error", "note"]), report


def precompute(dataset: datasets.Dataset, processor: Any, config: DataConfig, report: DataReport) -> datasets.Dataset:
    """Precomputed mode: every example's features computed once into the datasets cache (`example_features`),
    returned as numpy arrays. Audio that does not decode as its header promised is counted and named."""
    featurized = dataset.map(
        _features_batch,
        features=datasets.Features(
            {
                **dataset.features,
                "input_features": datasets.List(datasets.List(datasets.Value("float32"))),
                "input_ids": datasets.List(datasets.Value("int32")),
                "labels": datasets.List(datasets.Value("int32")),
                "error": datasets.Value("string"),
                "warning": datasets.Value("string"),
            }
        ),
        batched=True,
        batch_size=16,
        num_proc=config.num_proc if config.num_proc > 1 else None,
        fn_kwargs={"processor": processor, "worker": config.num_proc > 1},
        new_fingerprint=_fingerprint(dataset._fingerprint, _processor_fingerprint(processor), "features"),
        desc="featurizing audio",
    )
    stored = columns(featurized, "warning", "error")
    warnings = stored["warning"]
    if any(warnings):  # the quality checks' warnings (near-silence, clipping), counted with the records
        sources = columns(featurized, "source")["source"]
        report.problems += [Problem(s, "audio", w, "warning") for s, w in zip(sources, warnings) if w]
    keep = _drop_bad_rows(featurized, stored["error"].tolist(), "audio does not match its header", report, config)
    result = featurized.select(keep) if len(keep) < len(featurized) else featurized
    report.usable = len(result)
    result = result.remove_columns(["error", "warning"])
    return result.with_format("numpy", columns=["input_features"], output_all_columns=True)


def featurize(
    dataset: datasets.Dataset,
    processor: Any,
    config: DataConfig,
    report: DataReport | None = None,
    *,
    precompute_features: bool | None = None,
    augmentation: Augmentation | None = None,
) -> tuple[datasets.Dataset, DataReport]:
    """Records -> training examples: `prepare` (cached, cheap), then the features precomputed into the cache
    (`precompute_features`, default `config.precompute_features`) or computed on the fly when a row is read
    (`FeatureTransform`, with `augmentation`, which needs on-the-fly features)."""
    precompute_features = config.precompute_features if precompute_features is None else precompute_features
    prepared, report = prepare(dataset, processor, config, report)
    if precompute_features:
        if augmentation is not None and augmentation.needs_on_the_fly:
            raise DataError(PRECOMPUTED_AUGMENTATION)
        if augmentation is not None and augmentation.dither > 0:
            logger.warning(
                "precomputed features are cached clean: dither %s is not applied (on-the-fly features apply it)",
                augmentation.dither,
            )
        result = precompute(prepared, processor, config, report)
    else:
        result = prepared.with_transform(FeatureTransform(processor, config.on_bad_data, augmentation))
    if report.usable < report.read:
        logger.warning("data: %s", report.format(MAX_PROBLEMS_SHOWN))
    return result, report


def build_dataset(
    manifests: list[str],
    processor: Any,
    config: DataConfig,
    text_files: list[str | None] | None = None,
    *,
    precompute_features: bool | None = None,
    augmentation: Augmentation | None = None,
) -> tuple[datasets.Dataset, DataReport]:
    """Manifests -> filtered training examples (features precomputed or on the fly, see `featurize`) and the
    report of what happened to every record."""
    dataset, report = load_records(manifests, config, text_files)
    return featurize(
        dataset, processor, config, report, precompute_features=precompute_features, augmentation=augmentation
    )
