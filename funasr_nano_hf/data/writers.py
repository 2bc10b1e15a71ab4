"""Manifest writers (`funasr-nano-hf convert-data`): any supported manifest -> FunASR's ChatML or source/target
JSONL (the inverse of `readers`). Model conversion is `funasr_nano_hf.conversion`, a different thing.

The guide's conversion step: `speech_length` = 10 ms fbank frames (from the audio header), `text_length`
= tokens of the model's tokenizer, so data prepared here also trains in FunASR's own trainer. Without
lengths it is fast; length filtering and batching then compute them.
"""

from __future__ import annotations

import json
import logging
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


def convert_manifest(
    source: str | Path,
    output: str | Path,
    *,
    to: str = "chatml",
    tokenizer=None,
    calculate_lengths: bool = True,
    text_path: str | Path | None = None,
) -> tuple[int, list[Problem]]:
    """Write `output`; returns (records written, problems). Records with problems are not written."""
    if to not in WRITERS:
        raise ValueError(f"--to must be one of {sorted(WRITERS)}, got {to!r}")
    if calculate_lengths and tokenizer is None:
        raise ValueError("calculate_lengths needs the model's tokenizer (--tokenizer DIR)")
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
            speech_length = fbank_frames(round(info.frames * 16000 / info.samplerate))
            text_length = len(tokenizer.encode(record.text, add_special_tokens=False))
        lines.append(json.dumps(WRITERS[to](record, speech_length, text_length), ensure_ascii=False))
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    Path(output).write_text("\n".join(lines) + ("\n" if lines else ""), encoding="utf-8")
    return len(lines), problems
