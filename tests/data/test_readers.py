"""Readers: the four formats agree; prompts are kept; every bad line is a named problem."""

from __future__ import annotations

import json

import pytest
import soundfile as sf

from funasr_nano_hf.data.audio import fbank_frames
from funasr_nano_hf.data.readers import detect_format, read_manifest, read_manifests
from funasr_nano_hf.data.writers import convert_manifest
from funasr_nano_hf.models.prompting import parse_instruction

FORMATS = {
    "valid.jsonl": "jsonl",
    "valid_chatml.jsonl": "chatml",
    "valid_source_target.jsonl": "source_target",
    "valid_wav.scp": "kaldi",
}


def _key(record):
    return record.key, record.audio, record.text


def test_all_four_formats_give_the_same_records(shared_dir):
    tts = shared_dir / "data" / "tts"
    results = {name: read_manifest(tts / name) for name in FORMATS}
    for name, result in results.items():
        assert result.format == FORMATS[name] == detect_format(tts / name)
        assert result.problems == [], name
        assert len(result.records) == 40
    reference = [_key(r) for r in results["valid.jsonl"].records]
    for name, result in results.items():
        assert [_key(r) for r in result.records] == reference, name
    assert all(r.audio.startswith(str(tts.resolve())) for r in results["valid.jsonl"].records)  # against the folder


def test_chatml_prompt_is_kept(shared_dir):
    records = read_manifest(shared_dir / "data" / "tts" / "valid_chatml.jsonl").records
    prompts = {r.instruction for r in records}
    assert prompts == {"语音转写：", "Speech transcription:"}
    samples = sf.info(records[0].audio).frames  # the manifest's speech_length: 25 ms / 10 ms fbank frames
    assert records[0].speech_length == fbank_frames(samples) > 0


@pytest.mark.parametrize(
    "prompt, expected",
    [
        ("语音转写成英文：", ("en", True, None)),
        ("语音转写，不进行文本规整：", (None, False, None)),
        ("Speech transcription without text normalization:", (None, False, None)),
        ("Transcribe speech into Chinese:", ("zh", True, None)),
        ("请结合上下文信息…\n热词列表：[滨海新区, 房子]\n语音转写：", (None, True, ["滨海新区", "房子"])),
    ],
)
def test_parse_instruction(prompt, expected):
    assert parse_instruction(prompt) == expected


def test_bad_lines_are_named(broken_dir):
    result = read_manifest(broken_dir / "broken.jsonl")
    by_line = {p.source.rsplit(":", 1)[1]: p for p in result.problems}
    path = str(broken_dir / "broken.jsonl")
    assert all(p.source.startswith(path + ":") for p in result.problems)
    assert by_line["9"].field == "txt" and "empty" in by_line["9"].reason
    assert by_line["10"].field == "<json>" and "malformed JSON" in by_line["10"].reason
    assert by_line["11"].field == "txt" and "missing field" in by_line["11"].reason
    assert by_line["12"].field == "key" and "duplicate key 'good'" in by_line["12"].reason
    assert by_line["15"].field == "<line>" and "not UTF-8" in by_line["15"].reason
    kept = {r.key for r in result.records}
    assert "blank" not in kept and "nofield" not in kept and len([r for r in result.records if r.key == "good"]) == 1


def test_unknown_format_and_missing_manifest(broken_dir):
    result = read_manifest(broken_dir / "unknown.jsonl")
    assert result.records == [] and "unknown manifest format" in result.problems[0].reason
    assert "['path', 'sentence']" in result.problems[0].reason
    assert read_manifest(broken_dir / "absent.jsonl").problems[0].reason == "manifest not found"


def test_duplicates_across_files(shared_dir):
    tts = shared_dir / "data" / "tts"
    result = read_manifests([str(tts / "valid.jsonl"), str(tts / "valid_chatml.jsonl")])
    assert len(result.records) == 40
    assert sum("duplicate key" in p.reason for p in result.problems) == 40


def test_kaldi_unpaired_ids_reported(tmp_path, shared_dir):
    wav = shared_dir / "data" / "tts" / "wav" / "valid" / "tts_valid_0000_en.wav"
    (tmp_path / "wav.scp").write_text(f"a {wav}\nb {wav}\n")
    (tmp_path / "text").write_text("a two nine\nc orphan\n")
    result = read_manifest(tmp_path / "wav.scp")
    assert [r.key for r in result.records] == ["a"]
    reasons = sorted(p.reason for p in result.problems)
    assert reasons == [
        "key 'b' has no transcript in " + str(tmp_path / "text"),
        "key 'c' has no audio in " + str(tmp_path / "wav.scp"),
    ]


@pytest.mark.parametrize("to", ["chatml", "source-target"])
def test_convert_round_trip(shared_dir, tmp_path, to):
    from funasr_nano_hf.testing.qwen_tokenizer import build_tiny_qwen_tokenizer

    tokenizer = build_tiny_qwen_tokenizer()
    source = shared_dir / "data" / "tts" / "valid.jsonl"
    written, problems = convert_manifest(source, tmp_path / "out.jsonl", to=to, tokenizer=tokenizer, lengths="tokens")
    assert written == len(read_manifest(source).records) > 0 and problems == []
    back = read_manifest(tmp_path / "out.jsonl")
    assert [_key(r) for r in back.records] == [_key(r) for r in read_manifest(source).records]
    first = json.loads((tmp_path / "out.jsonl").read_text().splitlines()[0])
    expected_frames = json.loads((shared_dir / "data" / "tts" / "valid_chatml.jsonl").read_text().splitlines()[0])
    frames = first.get("speech_length", first.get("source_len"))
    assert frames == expected_frames["speech_length"]
    first_text = read_manifest(source).records[0].text
    assert first.get("text_length", first.get("target_len")) == len(
        tokenizer.encode(first_text, add_special_tokens=False)
    )
    _, _ = convert_manifest(source, tmp_path / "fast.jsonl", to=to, calculate_lengths=False)
    assert (
        "speech_length" not in (tmp_path / "fast.jsonl").read_text()
        and "source_len" not in (tmp_path / "fast.jsonl").read_text()
    )
