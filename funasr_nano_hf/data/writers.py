"""Manifest writers (`funasr-nano-hf convert-data`): any supported manifest -> FunASR's ChatML or source/target
JSONL (the inverse of `readers`). Model conversion is `funasr_nano_hf.conversion`, a different thing.

Two length conventions (`LENGTHS`), from the audio header (no decoding):
- ``chars``, the guide's converter (scripts/convert_data_format.py), default for the source-target format:
  ``source_len`` = duration in 10 ms units (floor of samples at 16 kHz / 160), ``target_len`` = characters of the
  transcript (spaces and punctuation included); no tokenizer needed.
- ``tokens``, FunASR's Fun-ASR-Nano data tool (``scp2jsonl``), default for ChatML: ``speech_length`` = 25 ms / 10 ms
  fbank frames, ``text_length`` = tokens of the model's tokenizer, so the data also trains in FunASR's own trainer.
Without lengths it is fast; length filtering and batching then compute them from the audio.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import soundfile as sf

from ..models.prompting import DEFAULT_SYSTEM_PROMPT, speech_span
from ..models.prompting import instruction as default_instruction
from .audio import fbank_frames
from .readers import AsrRecord, Problem, read_manifest

logger = logging.getLogger(__name__)


def to_chatml_line(record: AsrRecord, speech_length: int | None, text_length: int | None) -> dict[str, Any]:
    """FunASR's ChatML line (its `speech_length`/`text_length` names); the record's own instruction or the default."""
    instruction = record.instruction if record.instruction is not None else default_instruction()
    line: dict[str, Any] = {
        "key": record.key,
        "messages": [
            {"role": "system", "content": DEFAULT_SYSTEM_PROMPT},
            {"role": "user", "content": instruction + speech_span(record.audio)},
            {"role": "assistant", "content": record.text},
        ],
    }
    if speech_length is not None:
        line["speech_length"] = speech_length
    if text_length is not None:
        line["text_length"] = text_length
    if record.hotwords:
        line["hotwords"] = record.hotwords
    return line


def to_source_target_line(record: AsrRecord, speech_length: int | None, text_length: int | None) -> dict[str, Any]:
    """FunASR's `{"source", "target", "source_len", "target_len"}` line (the guide's default format)."""
    line: dict[str, Any] = {"key": record.key, "source": record.audio, "target": record.text}
    if speech_length is not None:
        line["source_len"] = speech_length
    if text_length is not None:
        line["target_len"] = text_length
    return line


WRITERS = {"chatml": to_chatml_line, "source-target": to_source_target_line}
LENGTHS = ("chars", "tokens")
DEFAULT_LENGTHS = {"chatml": "tokens", "source-target": "chars"}


def guide_source_len(frames: int, sample_rate: int) -> int:
    """The guide converter's `source_len`: `int(len(librosa.load(wav, sr=16000)[0]) / 16000 * 100)`, i.e. the
    duration in 10 ms units, floored (resampling gives ceil(frames * 16000 / rate) samples)."""
    samples = frames if sample_rate == 16000 else math.ceil(frames * 16000 / sample_rate)
    return int(samples / 16000 * 100)


def convert_manifest(
    source: str | Path,
    output: str | Path,
    *,
    to: str = "chatml",
    tokenizer=None,
    calculate_lengths: bool = True,
    lengths: str | None = None,
    text_path: str | Path | None = None,
) -> tuple[int, list[Problem]]:
    """Write `output`; returns (records written, problems). Records with problems are not written. `lengths`:
    "chars" (the guide's units) or "tokens" (FunASR's Nano tool; needs `tokenizer`); default by format
    (`DEFAULT_LENGTHS`)."""
    if to not in WRITERS:
        raise ValueError(f"--to must be one of {sorted(WRITERS)}, got {to!r}")
    lengths = lengths or DEFAULT_LENGTHS[to]
    if lengths not in LENGTHS:
        raise ValueError(f"--lengths must be one of {list(LENGTHS)}, got {lengths!r}")
    if calculate_lengths and lengths == "tokens" and tokenizer is None:
        raise ValueError("token lengths need the model's tokenizer (--tokenizer DIR), or use --lengths chars")
    result = read_manifest(source, text_path)
    problems = list(result.problems)
    lines = []
    for record in result.records:
        speech_length = text_length = None
        if calculate_lengths:
            try:
                info = sf.info(record.audio)
            except (sf.LibsndfileError, RuntimeError) as err:
                problems.append(Problem(record.source, "audio", f"unreadable audio {record.audio} ({err})"))
                continue
            if lengths == "chars":
                speech_length = guide_source_len(info.frames, info.samplerate)
                text_length = len(record.text)
            else:
                speech_length = fbank_frames(round(info.frames * 16000 / info.samplerate))
                text_length = len(tokenizer.encode(record.text, add_special_tokens=False))
        lines.append(json.dumps(WRITERS[to](record, speech_length, text_length), ensure_ascii=False))
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    Path(output).write_text("\n".join(lines) + ("\n" if lines else ""), encoding="utf-8")
    return len(lines), problems
