"""Long audio: segmentation at pauses, the encoder's hard limit, stitching with timestamps; a 10-minute
recording on the bundled model contains each clip's one-by-one transcript."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from funasr_nano_hf.inference import transcribe, transcribe_detailed
from funasr_nano_hf.inference.segmentation import (
    Segment,
    SegmentationConfig,
    check_length,
    join_texts,
    max_samples,
    segment_waveform,
)

RATE = 16000
BUNDLED = Path(__file__).resolve().parents[2] / "examples" / "bundled"


def _tone(seconds: float, seed: int = 0) -> np.ndarray:
    """Speech-like: a noisy tone at ~-20 dB."""
    t = np.arange(int(seconds * RATE)) / RATE
    noise = np.random.default_rng(seed).normal(0, 0.02, len(t))
    return (0.1 * np.sin(2 * np.pi * 220 * t) + noise).astype(np.float32)


def test_short_clip_is_one_piece_and_silence_gives_none():
    config = SegmentationConfig(max_segment_s=5)
    assert segment_waveform(_tone(4.0), RATE, config) == [Segment(0, 4 * RATE)]
    assert segment_waveform(np.zeros(20 * RATE, np.float32), RATE, config) == []


def test_cuts_fall_in_pauses_and_keep_a_little_silence():
    pause = np.zeros(RATE, np.float32)
    parts = [_tone(3.0, 0), pause, _tone(2.0, 1), pause, pause, _tone(4.0, 2), pause]
    wave = np.concatenate(parts)
    starts = np.cumsum([0] + [len(p) for p in parts])
    pieces = segment_waveform(wave, RATE, SegmentationConfig(max_segment_s=5, pad_s=0.1))
    assert len(pieces) == 3
    for piece, (tone_start, tone_end) in zip(pieces, [(0, 3), (4, 6), (8, 12)]):
        assert abs(piece.start - max(0, tone_start * RATE - 1600)) <= 160  # 100 ms of pause before
        assert abs(piece.end - (tone_end * RATE + 1600)) <= 160  # and after
    assert starts[-1] == len(wave)


def test_speech_without_pauses_is_cut_below_the_span():
    wave = _tone(23.0)
    wave[int(7.5 * RATE) : int(7.6 * RATE)] *= 0.01  # a quiet spot the cut should find
    pieces = segment_waveform(wave, RATE, SegmentationConfig(max_segment_s=8))
    assert all(p.end - p.start <= 8 * RATE for p in pieces)
    assert pieces[0].start == 0 and pieces[-1].end == len(wave)
    assert all(a.end == b.start for a, b in zip(pieces, pieces[1:]))  # nothing lost between pieces
    assert 7.5 * RATE <= pieces[0].end <= 7.6 * RATE


def test_limit_is_the_encoder_position_table(tiny_model):
    """`max_samples` is the longest clip whose LFR frames fit `max_position_embeddings - 1` positions."""
    model, processor = tiny_model
    extractor = processor.feature_extractor
    positions = model.config.audio_config.max_position_embeddings - 1
    limit = max_samples(model.config, extractor)

    def lfr_frames(n: int) -> int:
        return int(extractor([np.zeros(n, np.float32)], return_tensors="pt")["input_features_mask"].sum())

    assert lfr_frames(limit) == positions
    assert lfr_frames(limit + 160) == positions + 1
    with pytest.raises(ValueError, match=r"long\.wav: .* longer than the model's limit"):
        check_length(limit + 1, limit, RATE, "long.wav")


def test_nothing_over_the_limit_reaches_the_model(tiny_model):
    model, processor = tiny_model
    limit = max_samples(model.config, processor.feature_extractor)
    too_long = np.zeros(limit + RATE, np.float32)
    with pytest.raises(ValueError, match="clip 0: .*limit.*segmentation"):
        transcribe(model, processor, [too_long], segmentation=SegmentationConfig(enabled=False), max_new_tokens=2)
    # segmented (the default): pieces at most the span; an all-silent recording has no piece: empty text
    (result,) = transcribe_detailed(model, processor, [too_long], max_new_tokens=2)
    assert result["text"] == "" and result["segments"] == []


def test_join_texts_is_funasr_join():
    assert join_texts(["你好", " 世界 ", "", "hello", "world", "再见"]) == "你好世界 hello world 再见"


# Fixed threshold, pauses in whole 10 ms blocks: a clip's segment is then the same samples wherever the clip sits.
CONFIG = SegmentationConfig(threshold_dbfs=-60.0)


def _piece(clip: np.ndarray) -> np.ndarray:
    """The segment the segmenter cuts for `clip` between pauses (block-aligned)."""
    padded = np.pad(clip, 2 * RATE)
    span = int(CONFIG.max_segment_s * RATE)
    (segment,) = segment_waveform(np.pad(padded, (0, span)), RATE, CONFIG)  # long enough to be segmented
    return padded[segment.start : segment.end]


def _usable_clips(model, processor, rows: list[dict]) -> tuple[list[np.ndarray], list[str]]:
    """Clips the model transcribes correctly, and identically from the segment the segmenter cuts for them.

    The small bundled model is sensitive to the exact samples it gets: a few milliseconds more or less of the
    silence around a clip can change the whole sentence, so only clips whose transcript does not depend on the
    cut can show that a long recording keeps each clip's transcript."""
    from funasr_nano_hf.data.audio import load_audio

    waves = [load_audio(str(BUNDLED / "data" / row["wav"]))[0] for row in rows]
    alone = transcribe(model, processor, waves, batch_size=16)
    right = [
        i for i, row in enumerate(rows) if alone[i].replace(" ", "").lower() == row["txt"].replace(" ", "").lower()
    ]
    cut = transcribe(model, processor, [_piece(waves[i]) for i in right], batch_size=16)
    keep = [i for i, text in zip(right, cut) if text == alone[i]]
    return [waves[i] for i in keep], [alone[i] for i in keep]


@pytest.mark.slow
def test_ten_minute_recording_contains_each_clip_transcript():
    from funasr_nano_hf import load_pretrained

    model, processor = load_pretrained(BUNDLED / "model")
    rows = [json.loads(line) for line in (BUNDLED / "data" / "pretrain_domain.jsonl").read_text().splitlines()]
    clips, texts = _usable_clips(model, processor, rows[:30])
    assert len(clips) >= 3, f"only {len(clips)} clips usable"
    rng = np.random.default_rng(0)
    parts, spans, clock, index = [], [], 0, 0
    while clock < 600 * RATE:  # clips in turn, each after a pause of 4-16 s (whole 10 ms blocks)
        pause = np.zeros(int(rng.uniform(400, 1600)) * 160, np.float32)
        clip = clips[index % len(clips)]
        parts += [pause, clip]
        spans.append((clock + len(pause), clock + len(pause) + len(clip), index % len(clips)))
        clock += len(pause) + len(clip)
        index += 1
    recording = np.concatenate(parts)
    assert len(recording) > max_samples(model.config, processor.feature_extractor)  # over the encoder's limit
    (result,) = transcribe_detailed(model, processor, [recording], batch_size=16, segmentation=CONFIG)
    segments = result["segments"]
    assert len(segments) == len(spans) and result["duration"] >= 600
    for segment, (start, end, which) in zip(segments, spans):
        # each segment is its clip's speech with ~100 ms of pause around it
        assert start / RATE - 0.15 <= segment["start"] < segment["end"] <= end / RATE + 0.15
        assert segment["text"] == texts[which]
    position = 0
    for _, _, which in spans:  # the stitched text has every clip's transcript, in order
        position = result["text"].index(texts[which], position) + len(texts[which])
