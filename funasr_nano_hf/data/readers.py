"""Manifest readers: the formats users already have, auto-detected per file, into one canonical record.

a. plain JSONL `{"key", "wav", "txt"}`;
b. FunASR `{"key"?, "source", "target", "source_len"?, "target_len"?}`;
c. FunASR ChatML `{"messages": [system, user "<instruction><|startofspeech|>!PATH<|endofspeech|>", assistant],
   "speech_length", "text_length", "key"?, "hotwords"?}` — the instruction is kept (it is trained on);
d. Kaldi `wav.scp` + `text` (split on the first run of whitespace).
Relative audio paths resolve against the manifest's folder. Nothing is dropped silently: every line that
cannot become a record is a `Problem` with file:line, field and reason.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ..models.prompting import SPEECH_SPAN_RE, parse_instruction

FORMATS = ("jsonl", "source_target", "chatml", "kaldi")


@dataclass
class AsrRecord:
    key: str
    audio: str  # absolute path
    text: str
    instruction: str | None = None  # user-turn text before the audio, exactly as found (None: the default)
    language: str | None = None
    hotwords: list[str] | None = None
    itn: bool = True
    source: str = ""  # "file:line"
    speech_length: int | None = None
    text_length: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """`dataclasses.asdict` without its recursive deep copy (a tenth of the cost, per record of a large
        manifest); the one list field is copied."""
        row = {name: getattr(self, name) for name in _RECORD_FIELDS}
        if row["hotwords"] is not None:
            row["hotwords"] = list(row["hotwords"])
        return row


_RECORD_FIELDS = tuple(f.name for f in fields(AsrRecord))


@dataclass(frozen=True)
class Problem:
    source: str  # "file:line" (or the file alone)
    field: str
    reason: str
    severity: str = "error"  # "error" | "warning"

    def __str__(self) -> str:
        return f"{self.severity}: {self.source}: {self.field}: {self.reason}"


@dataclass
class ReadResult:
    records: list[AsrRecord] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    format: str | None = None

    @property
    def rejected(self) -> int:
        """Manifest lines (or whole files) that did not become a record: one per place with an error, however
        many errors it has (a line with a bad path and a bad transcript is one lost record, not two)."""
        return len({p.source for p in self.problems if p.severity == "error"})


def _lines(path: Path, problems: list[Problem]):
    """(line number, text) of every non-empty line; undecodable lines become problems."""
    for number, raw in enumerate(path.read_bytes().splitlines(), 1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            problems.append(Problem(f"{path}:{number}", "<line>", f"not UTF-8 ({err.reason} at byte {err.start})"))
            continue
        if line.strip():
            yield number, line.lstrip("\ufeff")


def detect_format(path: str | Path) -> str:
    path = Path(path)
    if path.suffix == ".scp":
        return "kaldi"
    for _, line in _lines(path, []):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(row, dict):
            continue
        keys = set(row)
        if "messages" in keys:
            return "chatml"
        if {"source", "target"} <= keys:
            return "source_target"
        if "wav" in keys and ("txt" in keys or "text" in keys):
            return "jsonl"
        raise ValueError(
            f"{path}: unknown manifest format: first record has keys {sorted(keys)}; expected "
            "{key, wav, txt}, {source, target, ...}, {messages, ...} or a Kaldi wav.scp"
        )
    raise ValueError(f"{path}: unknown manifest format: no JSON object line found (a Kaldi list needs a .scp name)")


def _resolve(base: Path, audio: str) -> str:
    if audio.startswith("/") and "//" not in audio and "/./" not in audio and not audio.endswith(("/", "/.")):
        return audio  # absolute and already as `Path` would spell it: no parsing (per line of a large manifest)
    try:
        candidate = Path(audio).expanduser()
        return str(candidate if candidate.is_absolute() else (base / candidate).resolve())
    except (ValueError, OSError, RuntimeError):  # a NUL byte, a symlink loop: the file check names it later
        return str(base / audio)


def _text_field(row: dict, name: str, where: str, problems: list[Problem]) -> str | None:
    value = row.get(name)
    if value is None:
        problems.append(Problem(where, name, "missing field"))
        return None
    if not isinstance(value, str):
        problems.append(Problem(where, name, f"expected a string, got {type(value).__name__}"))
        return None
    if not value.strip():
        problems.append(Problem(where, name, "empty or whitespace-only transcript"))
        return None
    return value.strip()


def _path_field(row: dict, name: str, where: str, problems: list[Problem]) -> str | None:
    """An audio path field: present, a string, not blank (each failure named as such)."""
    value = row.get(name)
    if value is None:
        problems.append(Problem(where, name, "missing field"))
    elif not isinstance(value, str):
        problems.append(Problem(where, name, f"expected a string (an audio path), got {type(value).__name__}"))
    elif not value.strip():
        problems.append(Problem(where, name, "empty audio path"))
    elif "\x00" in value:
        problems.append(Problem(where, name, "audio path contains a NUL character"))
    else:
        return value
    return None


def _optional_int(row: dict, name: str, where: str, problems: list[Problem]) -> int | None:
    """A length field FunASR writes (`speech_length`, `source_len` ...): absent, or a non-negative integer."""
    value = row.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        problems.append(Problem(where, name, f"expected a non-negative integer, got {value!r}: ignored", "warning"))
        return None
    return value


def _record_from_row(fmt: str, row: dict, base: Path, where: str, problems: list[Problem]) -> AsrRecord | None:
    if fmt == "jsonl":
        text = _text_field(row, "text" if "text" in row and "txt" not in row else "txt", where, problems)
        audio = _path_field(row, "wav", where, problems)
        if audio is None:
            return None
        if "key" not in row:
            problems.append(Problem(where, "key", "missing field"))
            return None
        if not isinstance(row["key"], (str, int)) or isinstance(row["key"], bool):
            problems.append(Problem(where, "key", f"expected a string, got {type(row['key']).__name__}"))
            return None
        return AsrRecord(str(row["key"]), _resolve(base, audio), text, source=where) if text else None
    if fmt == "source_target":
        text = _text_field(row, "target", where, problems)
        audio = _path_field(row, "source", where, problems)
        if audio is None:
            return None
        key = str(row.get("key") or Path(audio).stem)
        return (
            AsrRecord(
                key,
                _resolve(base, audio),
                text,
                source=where,
                speech_length=_optional_int(row, "source_len", where, problems),
                text_length=_optional_int(row, "target_len", where, problems),
            )
            if text
            else None
        )
    # chatml
    messages = row.get("messages")
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        problems.append(Problem(where, "messages", "missing field or not a list of {role, content}"))
        return None
    user = next((m for m in messages if m.get("role") == "user"), None)
    assistant = next((m for m in messages if m.get("role") == "assistant"), None)
    if user is None or not isinstance(user.get("content"), str):
        problems.append(Problem(where, "messages[user]", "missing user turn"))
        return None
    match = SPEECH_SPAN_RE.search(user["content"])
    if match is None or not match.group(1).strip():
        problems.append(Problem(where, "messages[user]", "no <|startofspeech|>!PATH<|endofspeech|> audio span"))
        return None
    if assistant is None:
        problems.append(Problem(where, "messages[assistant]", "missing assistant turn"))
        return None
    text = _text_field(assistant, "content", where, problems)
    if text is None:
        return None
    instruction = user["content"][: match.start()]
    language, itn, hotwords = parse_instruction(instruction)
    if isinstance(row.get("hotwords"), list):
        hotwords = [str(w) for w in row["hotwords"]]
    audio = match.group(1).strip()
    return AsrRecord(
        str(row.get("key") or Path(audio).stem),
        _resolve(base, audio),
        text,
        instruction=instruction,
        language=language,
        hotwords=hotwords,
        itn=itn,
        source=where,
        speech_length=_optional_int(row, "speech_length", where, problems),
        text_length=_optional_int(row, "text_length", where, problems),
    )


def _kaldi_text_path(scp: Path) -> Path | None:
    name = scp.name
    for candidate in (
        name.replace("wav.scp", "text"),
        name.replace("wav.scp", "text.txt"),
        name.replace(".scp", ".txt"),
        "text",
    ):
        if candidate != name and (scp.parent / candidate).is_file():
            return scp.parent / candidate
    return None


# Kaldi's command pipes ("sox a.flac -t wav - |") and archive offsets ("feats.ark:1234", "ark:- ..."):
# never executed, never opened as a path.
_KALDI_UNSUPPORTED = re.compile(r"\|\s*$|^\s*ark:|\.ark:\d+\s*$")


def _read_kaldi(scp: Path, text_path: Path | None, result: ReadResult) -> None:
    problems = result.problems
    text_path = text_path or _kaldi_text_path(scp)
    if text_path is None:
        problems.append(Problem(str(scp), "text", "no transcript file found (pass text_path / --text)"))
        return

    def table(path: Path, field_name: str) -> dict[str, tuple[str, str]]:
        rows: dict[str, tuple[str, str]] = {}
        for number, line in _lines(path, problems):
            parts = line.strip().split(maxsplit=1)
            where = f"{path}:{number}"
            if len(parts) < 2 or not parts[1].strip():
                problems.append(Problem(where, field_name, "empty value" if parts else "empty line"))
                continue
            if parts[0] in rows:
                problems.append(Problem(where, "key", f"duplicate key {parts[0]!r} (first at {rows[parts[0]][1]})"))
                continue
            rows[parts[0]] = (parts[1].strip(), where)
        return rows

    wavs, texts = table(scp, "wav"), table(text_path, "text")
    for key, (audio, where) in list(wavs.items()):
        if _KALDI_UNSUPPORTED.search(audio):
            problems.append(
                Problem(where, "wav", f"not supported: pipe/ark entries ({audio!r}); extract to files first")
            )
            del wavs[key]  # never run nor opened; its transcript is not reported again as orphaned
            texts.pop(key, None)
            continue
        if key not in texts:
            problems.append(Problem(where, "text", f"key {key!r} has no transcript in {text_path}"))
            continue
        result.records.append(AsrRecord(key, _resolve(scp.parent, audio), texts[key][0], source=where))
    for key, (_, where) in texts.items():
        if key not in wavs:
            problems.append(Problem(where, "wav", f"key {key!r} has no audio in {scp}"))


def read_manifest(path: str | Path, text_path: str | Path | None = None) -> ReadResult:
    """Every record of one manifest, and every problem met reading it (never raises for bad lines)."""
    path = Path(path)
    result = ReadResult()
    if not path.is_file():
        result.problems.append(Problem(str(path), "<file>", "manifest not found"))
        return result
    try:
        fmt = detect_format(path)
    except ValueError as err:
        result.problems.append(Problem(str(path), "<format>", str(err).split(": ", 1)[1]))
        return result
    result.format = fmt
    if fmt == "kaldi":
        _read_kaldi(path, Path(text_path) if text_path else None, result)
    else:
        for number, line in _lines(path, result.problems):
            where = f"{path}:{number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                result.problems.append(Problem(where, "<json>", f"malformed JSON ({err.msg} at column {err.colno})"))
                continue
            if not isinstance(row, dict):
                result.problems.append(Problem(where, "<json>", f"expected an object, got {type(row).__name__}"))
                continue
            record = _record_from_row(fmt, row, path.parent, where, result.problems)
            if record is not None:
                result.records.append(record)
    _flag_duplicates(result)
    return result


def _flag_duplicates(result: ReadResult, seen: dict[str, str] | None = None) -> None:
    """Duplicate keys: the first occurrence is kept, later ones become problems."""
    seen = {} if seen is None else seen
    kept = []
    for record in result.records:
        if record.key in seen:
            result.problems.append(
                Problem(record.source, "key", f"duplicate key {record.key!r} (first at {seen[record.key]})")
            )
            continue
        seen[record.key] = record.source
        kept.append(record)
    result.records = kept


def read_manifests(paths: list[str], text_paths: list[str | None] | None = None) -> ReadResult:
    """Several manifests; duplicate keys are also caught ACROSS files."""
    combined = ReadResult()
    seen: dict[str, str] = {}
    for path, text in zip(paths, text_paths or [None] * len(paths)):
        result = read_manifest(path, text)
        _flag_duplicates(result, seen)
        combined.problems += result.problems
        combined.records += result.records
    return combined


# -- writers: FunASR's formats ---------------------------------------------------------------------------
