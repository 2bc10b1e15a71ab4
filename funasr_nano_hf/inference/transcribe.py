"""Batched greedy transcription with FunASR's prompts: one decoding loop for every caller.

FunASR decodes one clip per `generate` call; here clips are left-padded into batches (so every row's prompt
ends where generation starts) and decoded together. Every transcript this package produces comes out of
`decode_batches`, whatever the batches were built from:

* audio (paths or 16 kHz waveforms): `transcribe_detailed` cuts clips longer than the comfortable span at
  pauses (`segmentation`), sorts all pieces by length, builds the batches with the processor's inference prompt
  (`FunAsrNanoHfProcessor.prepare_transcription`) and returns one result per clip, in input order, with
  per-segment timestamps for segmented clips; `transcribe` is its texts; the transformers pipeline
  (`pipeline.FunAsrNanoAsrPipeline`) decodes through the same functions;
* featurized dataset rows (`data.featurize`: the training prompt, already tokenised, and the audio features):
  `transcribe_featurized` batches them in the given order with the generation collator; the Trainer's CER
  decoding (`FunAsrNanoTrainer.generate_transcripts`) and the tests use it.

`generate_ids` is the same generation step for one batch of waveforms, returning the raw ids (parity tests).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .segmentation import Segment, SegmentationConfig, check_length, join_texts, max_samples, segment_waveform

AudioLike = str | Path | np.ndarray

# The public names are listed once, in `funasr_nano_hf.inference.__all__`.


def default_max_new_tokens(duration_s: float) -> int:
    """A generous cap that scales with the audio: 20 + 12 tokens per second, at most FunASR's 512.

    Speech runs at ~4-6 characters (zh) or ~3 words (en) a second, so a transcript needs far fewer;
    the cap only stops a runaway (repeating) decode of a long clip.
    """
    return min(512, 20 + math.ceil(12 * duration_s))


def repeated_span(ids: Sequence[int], min_repeats: int = 4, max_span: int = 8) -> bool:
    """True when the output ends in a span of 1..max_span tokens repeated min_repeats times (a decode loop)."""
    for span in range(1, max_span + 1):
        tail = list(ids[-span * min_repeats :])
        if len(tail) == span * min_repeats and all(tail[i] == tail[i % span] for i in range(len(tail))):
            return True
    return False


@dataclass(frozen=True)
class GenerationBatch:
    """Left-padded generation inputs for some clips (``input_ids`` = the prompts, the audio features and their
    masks) and the cap on the tokens generated for them."""

    inputs: Mapping[str, Any]
    max_new_tokens: int
    # Each row's own cap (<= max_new_tokens) when the rows differ: tokens past it are dropped, so a row decodes
    # as it would alone (greedy decoding is row-wise causal) whatever else is in its batch.
    row_caps: tuple[int, ...] | None = None


@dataclass(frozen=True)
class Decoded:
    """One clip's greedy transcript, with the guards that keep a bad decode from passing silently:
    `hit_limit` (stopped by ``max_new_tokens``, not by an end-of-sequence token) and `repeated` (the output ends
    in a repeating span, `repeated_span`)."""

    text: str
    hit_limit: bool
    repeated: bool


# ----------------------------------------------------------------------------------------------------------
# the decoding loop
# ----------------------------------------------------------------------------------------------------------
@torch.no_grad()
def generate_batch(
    model: Any,
    inputs: Mapping[str, Any],
    *,
    max_new_tokens: int,
    device: torch.device | str | None = None,
    **generate_kwargs: Any,
) -> torch.Tensor:
    """`model.generate` on one left-padded batch (greedy unless `generate_kwargs` say otherwise) -> the generated
    ids only (prompt stripped), padded with pad_token_id. The tensors go to `device` (default the model's)."""
    device = model.device if device is None else device
    inputs = {key: value.to(device) if isinstance(value, torch.Tensor) else value for key, value in inputs.items()}
    generate_kwargs.setdefault("do_sample", False)
    output = model.generate(**inputs, max_new_tokens=max_new_tokens, **generate_kwargs)
    return output[:, inputs["input_ids"].shape[1] :]


def _eos_ids(model: Any) -> set[int]:
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    return set(eos if isinstance(eos, list) else [eos])


def decode_batches(
    model: Any,
    processor: Any,
    batches: Iterable[GenerationBatch],
    *,
    device: torch.device | str | None = None,
    **generate_kwargs: Any,
) -> Iterator[list[Decoded]]:
    """THE decoding loop: for each batch, `generate_batch`, FunASR's post-processing of the ids
    (`FunAsrNanoHfProcessor.batch_decode_transcripts`) and the per-row guards; yields one `Decoded` per row,
    in the batch's row order. `generate_kwargs` go to `generate` (not ``max_new_tokens``: each batch has its
    own)."""
    eos = _eos_ids(model)
    pad = processor.tokenizer.pad_token_id
    for batch in batches:
        ids = generate_batch(model, batch.inputs, max_new_tokens=batch.max_new_tokens, device=device, **generate_kwargs)
        caps = batch.row_caps or (batch.max_new_tokens,) * ids.shape[0]
        ids = ids.masked_fill(
            torch.arange(ids.shape[1], device=ids.device)[None, :] >= torch.tensor(caps, device=ids.device)[:, None],
            pad,
        )
        decoded = []
        for row, text, cap in zip(ids.tolist(), processor.batch_decode_transcripts(ids), caps):
            tokens = [t for t in row if t != pad]
            content = [t for t in tokens if t not in eos]
            stopped = len(content) < len(tokens)
            decoded.append(Decoded(text, not stopped and len(tokens) >= cap, repeated_span(content)))
        yield decoded


# ----------------------------------------------------------------------------------------------------------
# batches from audio
# ----------------------------------------------------------------------------------------------------------
def _as_waveform(item: AudioLike, sampling_rate: int) -> np.ndarray:
    if isinstance(item, (str, Path)):
        from ..data.audio import load_audio

        waveform, _ = load_audio(str(item), target_sr=sampling_rate)
        return waveform
    waveform = np.asarray(item, dtype=np.float32)
    if waveform.ndim != 1:
        raise ValueError(f"expected a mono 1-D waveform at {sampling_rate} Hz, got shape {waveform.shape}")
    return waveform


def waveform_batches(
    processor: Any,
    waveforms: Sequence[np.ndarray],
    chunks: Iterable[Sequence[int]],
    *,
    max_new_tokens: int | None = None,
    language: str | None = None,
    hotwords: Sequence[str] | None = None,
    itn: bool = True,
    instructions: Sequence[str] | None = None,
) -> Iterator[GenerationBatch]:
    """One batch per chunk of indices into `waveforms`, with FunASR's inference prompt (the same for every clip,
    or one `instructions` text per waveform); the cap is `max_new_tokens`, or each clip's own
    `default_max_new_tokens` (`GenerationBatch.row_caps`)."""
    if instructions is not None and len(instructions) != len(waveforms):
        raise ValueError(f"got {len(instructions)} instructions for {len(waveforms)} clips")
    rate = processor.feature_extractor.sampling_rate
    for chunk in chunks:
        clips = [waveforms[i] for i in chunk]
        inputs = processor.prepare_transcription(
            clips,
            language=language,
            hotwords=hotwords,
            itn=itn,
            instructions=None if instructions is None else [instructions[i] for i in chunk],
        )
        if max_new_tokens is not None:
            yield GenerationBatch(inputs, max_new_tokens)
        else:
            caps = tuple(default_max_new_tokens(len(clip) / rate) for clip in clips)
            yield GenerationBatch(inputs, max(caps), caps)


def generate_ids(
    model: Any,
    processor: Any,
    waveforms: Sequence[np.ndarray],
    *,
    language: str | None = None,
    hotwords: Sequence[str] | None = None,
    itn: bool = True,
    instructions: Sequence[str] | None = None,
    **generate_kwargs: Any,
) -> torch.Tensor:
    """One left-padded batch of waveforms -> the generated ids only (prompt stripped), padded with
    pad_token_id (`generate_batch` on `waveform_batches`' batch)."""
    max_new_tokens = generate_kwargs.pop("max_new_tokens", None)
    (batch,) = waveform_batches(
        processor,
        waveforms,
        [range(len(waveforms))],
        max_new_tokens=max_new_tokens,
        language=language,
        hotwords=hotwords,
        itn=itn,
        instructions=instructions,
    )
    return generate_batch(model, batch.inputs, max_new_tokens=batch.max_new_tokens, **generate_kwargs)


def segment_clips(
    processor: Any,
    model_config: Any,
    waveforms: Sequence[np.ndarray],
    segmentation: SegmentationConfig,
    names: Sequence[str] | None = None,
) -> list[list[Segment]]:
    """The pieces each clip is decoded in (`segmentation.segment_waveform`), or the whole clip when segmentation
    is off, after checking that it fits the encoder's position table (a ValueError naming the clip otherwise)."""
    extractor = processor.feature_extractor
    rate = extractor.sampling_rate
    limit = max_samples(model_config, extractor)
    pieces = []
    for index, waveform in enumerate(waveforms):
        if segmentation.enabled:
            pieces.append(segment_waveform(waveform, rate, segmentation, limit))
        else:
            check_length(len(waveform), limit, rate, names[index] if names else f"clip {index}")
            pieces.append([Segment(0, len(waveform))])
    return pieces


def transcribe_detailed(
    model: Any,
    processor: Any,
    audio: AudioLike | Sequence[AudioLike],
    *,
    batch_size: int = 8,
    language: str | None = None,
    hotwords: Sequence[str] | None = None,
    itn: bool = True,
    progress: bool = False,
    segmentation: SegmentationConfig | None = None,
    device: torch.device | str | None = None,
    **generate_kwargs: Any,
) -> list[dict[str, Any]]:
    """Transcribe paths or 16 kHz mono arrays into one result per clip, in input order: ``text``, ``duration``
    (seconds), the guards ``hit_limit`` and ``repeated`` (`Decoded`; for a segmented clip, any segment's), and
    for a clip longer than the comfortable span (`SegmentationConfig.max_segment_s`) ``segments``: one
    ``{"start", "end", "text"}`` (seconds) per piece it was cut into at pauses, the texts joined as FunASR joins
    VAD segments. All pieces of all clips are sorted by length (longest first) into batches of `batch_size`;
    the results do not depend on the batching. `generate_kwargs` (e.g. ``max_new_tokens``) go to `generate`;
    ``device`` (default the model's) receives the inputs."""
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    single = isinstance(audio, (str, Path)) or (isinstance(audio, np.ndarray) and audio.ndim == 1)
    items = [audio] if single else list(audio)
    rate = processor.feature_extractor.sampling_rate
    waveforms = [_as_waveform(item, rate) for item in items]
    names = [str(item) if isinstance(item, (str, Path)) else f"clip {i}" for i, item in enumerate(items)]
    segments = segment_clips(processor, model.config, waveforms, segmentation or SegmentationConfig(), names)
    pieces = [(clip, segment) for clip, clip_segments in enumerate(segments) for segment in clip_segments]
    views = [waveforms[clip][segment.start : segment.end] for clip, segment in pieces]
    order = sorted(range(len(views)), key=lambda i: len(views[i]), reverse=True)
    chunks = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
    batches = waveform_batches(
        processor,
        views,
        chunks,
        max_new_tokens=generate_kwargs.pop("max_new_tokens", None),
        language=language,
        hotwords=hotwords,
        itn=itn,
    )
    decoded: list[Decoded | None] = [None] * len(views)
    rows = decode_batches(
        model,
        processor,
        tqdm(batches, total=len(chunks), disable=not progress, desc="transcribing"),
        device=device,
        **generate_kwargs,
    )
    for chunk, batch_rows in zip(chunks, rows):
        for index, row in zip(chunk, batch_rows):
            decoded[index] = row
    results: list[dict[str, Any]] = []
    cursor = 0
    for clip, clip_segments in enumerate(segments):
        own = decoded[cursor : cursor + len(clip_segments)]
        cursor += len(clip_segments)
        whole = len(clip_segments) == 1 and clip_segments[0] == Segment(0, len(waveforms[clip]))
        result = {
            "text": own[0].text if whole else join_texts([row.text for row in own]),
            "duration": round(len(waveforms[clip]) / rate, 3),
            "hit_limit": any(row.hit_limit for row in own),
            "repeated": any(row.repeated for row in own),
        }
        if not clip_segments:
            result["warning"] = "no speech found (segmentation kept no piece of the recording)"
        if not whole:
            result["segments"] = [
                {"start": a, "end": b, "text": row.text}
                for (a, b), row in zip((segment.seconds(rate) for segment in clip_segments), own)
            ]
        results.append(result)
    return results


def transcribe(model: Any, processor: Any, audio: AudioLike | Sequence[AudioLike], **kwargs: Any) -> list[str]:
    """Transcribe paths or 16 kHz mono arrays: the texts of `transcribe_detailed`, which takes the same keyword
    arguments (``batch_size``, ``language``, ``hotwords``, ``itn``, ``segmentation``, ``device``, generation
    options such as ``max_new_tokens``)."""
    return [result["text"] for result in transcribe_detailed(model, processor, audio, **kwargs)]


# ----------------------------------------------------------------------------------------------------------
# batches from featurized dataset rows
# ----------------------------------------------------------------------------------------------------------
def featurized_batches(
    rows: Any, pad_token_id: int, *, batch_size: int, max_new_tokens: int | None = None
) -> Iterator[GenerationBatch]:
    """Featurized rows (a `datasets.Dataset` or a sequence of dicts with ``input_features`` or
    ``audio_embeds``, ``input_ids``, ``prompt_length``, ``num_frames``), `batch_size` at a time in their order:
    each row's prompt, left-padded by the generation collator; the cap is `max_new_tokens` or each row's own
    `default_max_new_tokens` (``num_frames`` fbank frames)."""
    from ..data.collator import FunAsrNanoCollator
    from ..data.featurize import FRAMES_PER_SECOND

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    collate = FunAsrNanoCollator(pad_token_id=pad_token_id, for_generation=True)
    for start in range(0, len(rows), batch_size):
        stop = min(start + batch_size, len(rows))
        chunk = list(rows.select(range(start, stop)) if hasattr(rows, "select") else rows[start:stop])
        if max_new_tokens:
            yield GenerationBatch(collate(chunk), max_new_tokens)
        else:
            caps = tuple(default_max_new_tokens(int(row["num_frames"]) / FRAMES_PER_SECOND) for row in chunk)
            yield GenerationBatch(collate(chunk), max(caps), caps)


def transcribe_featurized(
    model: Any,
    processor: Any,
    rows: Any,
    *,
    batch_size: int,
    max_new_tokens: int | None = None,
    device: torch.device | str | None = None,
    **generate_kwargs: Any,
) -> list[Decoded]:
    """Greedy transcripts of featurized rows (`featurized_batches`), in row order: the Trainer's CER decoding."""
    batches = featurized_batches(
        rows, processor.tokenizer.pad_token_id, batch_size=batch_size, max_new_tokens=max_new_tokens
    )
    return [
        row
        for decoded in decode_batches(model, processor, batches, device=device, **generate_kwargs)
        for row in decoded
    ]
