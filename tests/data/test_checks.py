"""check-data on a folder of deliberately broken inputs: every problem named, non-zero exit."""

from __future__ import annotations

import json

import numpy as np
import pytest

from funasr_nano_hf.cli.main import main as cli_main
from funasr_nano_hf.data.audio import fbank_frames, load_audio
from funasr_nano_hf.data.checks import check_manifests
from funasr_nano_hf.errors import AudioError


def test_report_names_every_problem(broken_dir):
    report = check_manifests([str(broken_dir / "broken.jsonl")], max_duration_s=20, max_text_length=200)
    text = report.format()
    path = str(broken_dir / "broken.jsonl")
    expect = {
        2: "missing audio file",
        3: "unreadable or corrupt audio",
        4: "zero-length audio",
        5: "8000 Hz: will be resampled",
        6: "44100 Hz: will be resampled",
        7: "48000 Hz: will be resampled",
        8: "2 channels: will be downmixed",
        9: "empty or whitespace-only transcript",
        10: "malformed JSON",
        11: "missing field",
        12: "duplicate key",
        13: "is longer than 20",
        14: "transcript length 300 exceeds 200",
        15: "not UTF-8",
    }
    for line, reason in expect.items():
        assert any(p.source == f"{path}:{line}" and reason in p.reason for p in report.problems), (line, text)
    assert report.has_errors
    assert "duration (s):" in text and "label length:" in text
    warnings = [p for p in report.problems if p.severity == "warning"]
    assert len(warnings) == 4  # 3 sample rates + stereo: usable, reported


def test_cli_exit_codes(broken_dir, shared_dir, capsys):
    assert cli_main(["check-data", str(shared_dir / "data" / "tts" / "valid.jsonl")]) == 0
    assert cli_main(["check-data", str(broken_dir / "broken.jsonl"), "--json", str(broken_dir / "r.json")]) == 1
    assert "malformed JSON" in capsys.readouterr().out
    written = json.loads((broken_dir / "r.json").read_text(encoding="utf-8"))
    assert set(written) == {"manifests", "records", "usable", "hours", "dropped", "errors", "warnings"}
    assert written["records"] == 15 and len(written["warnings"]) == 4
    assert any("malformed JSON" in error for error in written["errors"])


def test_load_audio_resamples_and_downmixes(broken_dir):
    good, info = load_audio(str(broken_dir / "good.wav"))
    assert not info.resampled and not info.downmixed
    for rate in (8000, 44100, 48000):
        wav, info = load_audio(str(broken_dir / f"sr{rate}.wav"))
        assert info.resampled and info.original_sr == rate
        assert abs(len(wav) - len(good)) <= 3
    wav, info = load_audio(str(broken_dir / "stereo.wav"))
    assert info.downmixed and info.channels == 2
    np.testing.assert_allclose(wav, good * 0.75, atol=1e-4)


@pytest.mark.parametrize(
    "name, reason",
    [("nowhere.wav", "missing audio file"), ("corrupt.wav", "unreadable"), ("empty.wav", "zero-length audio")],
)
def test_load_audio_errors_name_the_file(broken_dir, name, reason):
    with pytest.raises(AudioError, match=reason) as err:
        load_audio(str(broken_dir / name))
    assert name in str(err.value)


def test_fbank_frames_matches_funasr(shared_dir):
    import soundfile as sf

    tts = shared_dir / "data" / "tts"
    for line in (tts / "valid_chatml.jsonl").read_text().splitlines()[:10]:
        row = json.loads(line)
        wav = row["messages"][1]["content"].split("!", 1)[1].split("<|endofspeech|>")[0]
        assert fbank_frames(sf.info(str(tts / wav)).frames) == row["speech_length"]
