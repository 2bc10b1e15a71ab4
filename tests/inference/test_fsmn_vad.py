"""FunASR's fsmn-vad as the pause finder (`inference.fsmn_vad`): the segments are FunASR's own VAD intervals
(FunASR's AutoModel on the same folder and audio is the oracle), within the span and the encoder's limit, each
decoded on its own; no speech gives a clear warning row; a missing funasr gives the install hint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import soundfile as sf
from helpers import BLOCK_FUNASR

from funasr_nano_hf.cli.main import main as cli_main
from funasr_nano_hf.inference import transcribe
from funasr_nano_hf.inference.fsmn_vad import INSTALL_HINT, load_fsmn_vad, vad_segments
from funasr_nano_hf.inference.segmentation import SegmentationConfig, join_texts, max_samples

RATE = 16000
SPAN_S = 4.0


@pytest.fixture(scope="module")
def vad_dir(tmp_path_factory):
    from funasr_nano_hf.testing.funasr_vad import write_fsmn_vad_folder

    return write_fsmn_vad_folder(tmp_path_factory.mktemp("fsmn_vad"))


@pytest.fixture(scope="module")
def recording(shared_dir) -> np.ndarray:
    """Real clips after 3 s pauses, then four clips back to back (speech longer than the span)."""
    clips = [sf.read(str(p), dtype="float32")[0] for p in sorted((shared_dir / "data/tts/wav/valid").glob("*.wav"))[:6]]
    pause = np.zeros(3 * RATE, np.float32)
    assert sum(len(clip) for clip in clips[2:]) > SPAN_S * RATE
    return np.concatenate([pause, clips[0], pause, clips[1], pause, *clips[2:], pause])


def _funasr_intervals(vad_dir, waveform: np.ndarray, **conf) -> list[tuple[int, int]]:
    """The oracle: FunASR's AutoModel on the folder, its [[beg_ms, end_ms], ...] in samples."""
    from funasr import AutoModel

    model = AutoModel(model=str(vad_dir), device="cpu", disable_update=True, disable_pbar=True, **conf)
    (result,) = model.generate(input=waveform)
    return [(beg * RATE // 1000, min(len(waveform), end * RATE // 1000)) for beg, end in result["value"]]


def test_cli_segments_are_funasr_vad_intervals_decoded_one_by_one(
    vad_dir, recording, tiny_original_dir, tiny_model, tmp_path, capsys
):
    sf.write(tmp_path / "long.wav", recording, RATE)
    quiet = np.random.default_rng(0).normal(0, 1e-3, 10 * RATE).astype(np.float32)  # audible, but no speech
    sf.write(tmp_path / "quiet.wav", quiet, RATE)
    out = tmp_path / "out.jsonl"
    argv = ["transcribe", "--model", str(tiny_original_dir), "--max-new-tokens", "3", "--output", str(out)]
    argv += ["--max-segment-s", str(SPAN_S), "--vad-model", str(vad_dir), str(tmp_path / "long.wav")]
    assert cli_main([*argv, str(tmp_path / "quiet.wav")]) == 0
    long_row, quiet_row = (json.loads(line) for line in out.read_text(encoding="utf-8").splitlines())

    # FunASR asked for segments at most the span (its max_single_segment_time ends one 10 ms frame past it)
    expected = _funasr_intervals(vad_dir, recording, max_single_segment_time=int(SPAN_S * 1000) - 10)
    assert len(expected) >= 4  # two clips alone + the back-to-back run, cut by FunASR at the span
    segments = long_row["segments"]
    assert [(s["start"], s["end"]) for s in segments] == [(round(a / RATE, 3), round(b / RATE, 3)) for a, b in expected]
    model, processor = tiny_model
    limit = max_samples(model.config, processor.feature_extractor)
    assert all(b - a <= min(SPAN_S * RATE, limit) for a, b in expected)
    alone = transcribe(model, processor, [recording[a:b] for a, b in expected], max_new_tokens=3)
    assert [s["text"] for s in segments] == alone
    assert long_row["text"] == join_texts(alone)

    assert quiet_row["segments"] == [] and quiet_row["text"] == ""
    assert "no speech found" in quiet_row["warning"]
    assert "quiet.wav: no speech found" in capsys.readouterr().err


def test_speech_over_the_span_is_cut_inside_funasr_intervals(vad_dir, recording):
    """Should FunASR return a longer interval (here: its released 60 s limit), it is cut at quiet blocks into
    pieces that tile it, none over the span."""
    span = int(SPAN_S * RATE)
    vad = load_fsmn_vad(str(vad_dir), int(SPAN_S * 1000))
    vad.model.model.vad_opts.max_single_segment_time = 60000
    try:
        pieces = vad_segments(recording, RATE, str(vad_dir), span)
    finally:
        load_fsmn_vad.cache_clear()
    expected = _funasr_intervals(vad_dir, recording)
    assert any(b - a > span for a, b in expected)  # the back-to-back run
    assert all(p.end - p.start <= span for p in pieces)
    remaining = list(pieces)
    for a, b in expected:  # each interval is exactly a run of consecutive pieces
        run = [remaining.pop(0)]
        while run[-1].end < b:
            run.append(remaining.pop(0))
        assert run[0].start == a and run[-1].end == b
        assert all(x.end == y.start for x, y in zip(run, run[1:]))
    assert remaining == []


def test_pipeline_takes_the_vad_through_its_segmentation(vad_dir, recording, tiny_model):
    from transformers import pipeline

    import funasr_nano_hf  # noqa: F401  (registers the pipeline route)
    from funasr_nano_hf.inference import transcribe_detailed

    model, processor = tiny_model
    config = SegmentationConfig(max_segment_s=SPAN_S, vad_model=vad_dir)
    asr = pipeline(
        "automatic-speech-recognition",
        model=model,
        tokenizer=processor.tokenizer,
        feature_extractor=processor.feature_extractor,
        segmentation=config,
    )
    (expected,) = transcribe_detailed(model, processor, [recording], segmentation=config, max_new_tokens=3)
    got = asr(recording, return_timestamps=True, generate_kwargs={"max_new_tokens": 3})
    assert len(expected["segments"]) >= 4 and got["text"] == expected["text"]
    assert got["chunks"] == [{"text": s["text"], "timestamp": (s["start"], s["end"])} for s in expected["segments"]]


def test_vad_folder_is_checked_up_front(tmp_path):
    with pytest.raises(ValueError, match=r"VAD model folder .* has no config\.yaml / model\.pt"):
        SegmentationConfig(vad_model=tmp_path)
    with pytest.raises(ValueError, match="is not a folder"):
        SegmentationConfig(vad_model=tmp_path / "missing")


@pytest.mark.slow
def test_without_funasr_the_vad_option_names_the_extra(vad_dir, sample_wav):
    script = BLOCK_FUNASR + textwrap.dedent(f"""
        from funasr_nano_hf.cli.main import main
        main(["transcribe", "--model", "unused", "--vad-model", {str(vad_dir)!r}, {str(sample_wav)!r}])
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=os.environ)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "transcribe: --vad-model:" in result.stderr and INSTALL_HINT in result.stderr
    assert "Traceback" not in result.stderr
