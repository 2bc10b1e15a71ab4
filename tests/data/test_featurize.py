"""Featurization through datasets: FunASR's training prompt, cached re-runs, counted length filters."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import soundfile as sf

from funasr_nano_hf.data.featurize import (
    DataConfig,
    TrainingIds,
    build_dataset,
    drop_reason,
    dropped,
    plain,
    source_lengths,
    text_length,
)
from funasr_nano_hf.errors import DataError


@pytest.fixture()
def small_set(shared_dir, tmp_path) -> Path:
    """Six valid clips copied (audio too) into tmp, so the test can delete the audio afterwards."""
    tts = shared_dir / "data" / "tts"
    lines = tts.joinpath("valid.jsonl").read_text(encoding="utf-8").splitlines()[:6]
    (tmp_path / "wav").mkdir()
    for line in lines:
        row = json.loads(line)
        shutil.copy(tts / row["wav"], tmp_path / "wav" / Path(row["wav"]).name)
    rows = [json.loads(line) for line in lines]
    rewritten = [json.dumps({**row, "wav": "wav/" + Path(row["wav"]).name}, ensure_ascii=False) for row in rows]
    (tmp_path / "set.jsonl").write_text("\n".join(rewritten) + "\n", encoding="utf-8")
    return tmp_path


def test_examples_follow_the_training_prompt(tiny_model, small_set, tmp_path):
    _, processor = tiny_model
    config = DataConfig(cache_dir=str(tmp_path / "c"))
    dataset, report = build_dataset([str(small_set / "set.jsonl")], processor, config)
    assert len(dataset) == report.usable == report.read == 6
    row = dataset[0]
    assert row["instruction"] is None  # plain JSONL: FunASR's default instruction
    waveform, _ = sf.read(row["audio"], dtype="float32")
    expected = processor.build_training_example(waveform, row["text"], row["instruction"])
    assert row["input_ids"] == expected["input_ids"]
    assert row["labels"] == expected["labels"]
    assert row["prompt_length"] == expected["prompt_length"]
    np.testing.assert_array_equal(np.asarray(row["input_features"], dtype=np.float32), expected["input_features"])
    # labels: -100 on the whole prompt (incl. audio tokens), then the transcript + <|im_end|>
    assert set(row["labels"][: row["prompt_length"]]) == {-100}
    tail = processor.tokenizer.decode(row["labels"][row["prompt_length"] :])
    assert tail == row["text"] + "<|im_end|>"


def test_second_run_is_a_cache_hit_without_audio(tiny_model, small_set, tmp_path):
    _, processor = tiny_model
    config = DataConfig(cache_dir=str(tmp_path / "c"))
    first, _ = build_dataset([str(small_set / "set.jsonl")], processor, config)
    shutil.rmtree(small_set / "wav")  # any audio work now would fail
    second, report = build_dataset([str(small_set / "set.jsonl")], processor, config)
    assert report.usable == 6 and not report.dropped.get("unreadable audio")
    for name in ("num_samples", "num_frames", "prompt_length", "num_tokens"):
        assert plain(second)[name] == plain(first)[name]


def test_length_filters_are_counted_by_reason(tiny_model, small_set, tmp_path):
    _, processor = tiny_model
    frames = build_dataset([str(small_set / "set.jsonl")], processor, DataConfig(cache_dir=str(tmp_path / "a")))[0]
    limit = sorted(plain(frames)["num_frames"])[3]
    dataset, report = build_dataset(
        [str(small_set / "set.jsonl")], processor, DataConfig(cache_dir=str(tmp_path / "b"), max_source_length=limit)
    )
    too_long = sum(n > limit for n in plain(frames)["num_frames"])
    assert report.dropped[f"audio longer than max_source_length={limit} fbank frames (10 ms)"] == too_long > 0
    assert len(dataset) == 6 - too_long
    _, report = build_dataset(
        [str(small_set / "set.jsonl")], processor, DataConfig(cache_dir=str(tmp_path / "d"), max_target_length=2)
    )
    assert report.dropped["transcript longer than max_target_length=2 text tokens"] == 6
    assert report.usable == 0
    assert "dropped (transcript longer than max_target_length=2 text tokens): 6" in report.format()


def test_lengths_are_funasrs_speech_and_text_length(tiny_model, small_set, tmp_path):
    """`max_source_length` / `max_target_length` compare what FunASR's index compares: the `speech_length` and
    `text_length` its scp2jsonl writes (kaldi fbank frames of the audio; Qwen3 tokens of the transcript, without
    `<|im_end|>`), so a limit equal to an example's length keeps it."""
    _, processor = tiny_model
    config = DataConfig(cache_dir=str(tmp_path / "a"))
    dataset, _ = build_dataset([str(small_set / "set.jsonl")], processor, config)
    for row in dataset:
        info = sf.info(row["audio"])
        assert row["num_frames"] == int((info.frames / info.samplerate * 1000 - 25) // 10 + 1)  # scp2jsonl's formula
        assert text_length(row["num_tokens"]) == len(processor.tokenizer.tokenize(row["text"]))
    texts = sorted(text_length(n) for n in plain(dataset)["num_tokens"])
    limit = texts[2]
    kept, report = build_dataset(
        [str(small_set / "set.jsonl")], processor, DataConfig(cache_dir=str(tmp_path / "b"), max_target_length=limit)
    )
    assert len(kept) == sum(t <= limit for t in texts)
    assert min(text_length(n) for n in plain(kept)["num_tokens"]) <= limit
    assert report.dropped[f"transcript longer than max_target_length={limit} text tokens"] == sum(
        t > limit for t in texts
    )


def test_max_token_length_counts_every_llm_token(tiny_model, small_set, tmp_path):
    """FunASR's `max_token_length` on the dataset: len(input_ids), prompt + audio placeholders + transcript."""
    _, processor = tiny_model
    dataset, report = build_dataset(
        [str(small_set / "set.jsonl")], processor, DataConfig(cache_dir=str(tmp_path / "a"))
    )
    assert report.usable == 6  # unset: FunASR's 1500, far above these clips
    totals = sorted(len(row["input_ids"]) for row in dataset)
    limit = totals[3]
    kept, report = build_dataset(
        [str(small_set / "set.jsonl")], processor, DataConfig(cache_dir=str(tmp_path / "b"), max_token_length=limit)
    )
    reason = f"example longer than max_token_length={limit} LLM tokens (prompt + audio placeholders + transcript)"
    assert report.dropped[reason] == sum(t > limit for t in totals) > 0
    # Set, the same key also bounds fbank frames + text tokens in FunASR's batch samplers (example too): the
    # rest of these clips (a few hundred frames each) go for that reason.
    sampler_reason = (
        f"fbank frames + text tokens over max_token_length={limit}, which FunASR's example batch sampler skips"
    )
    assert report.dropped[sampler_reason] == sum(t <= limit for t in totals) and len(kept) == 0


@pytest.fixture()
def long_clip(small_set) -> Path:
    """One clip of ~25 s: over FunASR's 2048 fbank frames + text tokens of its length/token sampler."""
    row = json.loads((small_set / "set.jsonl").read_text(encoding="utf-8").splitlines()[0])
    audio, rate = sf.read(str(small_set / row["wav"]), dtype="float32")
    sf.write(str(small_set / "wav" / "long.wav"), np.tile(audio, int(25 * rate / len(audio)) + 1), rate)
    (small_set / "long.jsonl").write_text(
        json.dumps({"key": "long", "wav": "wav/long.wav", "txt": row["txt"]}, ensure_ascii=False) + "\n"
    )
    return small_set / "long.jsonl"


def test_length_and_token_batching_skip_what_funasrs_sampler_skips(tiny_model, long_clip, tmp_path):
    """FunASR's length/token samplers skip `source_len` (fbank frames + text tokens) over `max_token_length`,
    2048 when unset; its example sampler only when it is set. Counted, not silent."""
    _, processor = tiny_model

    def build(name: str, **options):
        config = DataConfig(cache_dir=str(tmp_path / name), max_source_length=10_000, **options)
        return build_dataset([str(long_clip)], processor, config)

    dataset, report = build("example", batch_type="example")
    assert len(dataset) == 1 and source_lengths(dataset)[0] > 2048
    for batch_type in ("length", "token"):
        dataset, report = build(batch_type, batch_type=batch_type)
        reason = (
            "fbank frames + text tokens over max_token_length=2048 (FunASR's default for its length/token "
            f"sampler), which FunASR's {batch_type} batch sampler skips"
        )
        assert len(dataset) == 0 and report.dropped == {reason: 1}
    dataset, report = build("set", batch_type="example", max_token_length=1000)
    assert len(dataset) == 0
    assert report.dropped == {
        "fbank frames + text tokens over max_token_length=1000, which FunASR's example batch sampler skips": 1
    }


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="batch_type must be one of"):
        DataConfig(batch_type="frames")
    with pytest.raises(ValueError, match="max_token_length must be a non-negative integer"):
        DataConfig(max_token_length=-1)


def test_unreadable_audio_stops_or_is_skipped_with_a_count(tiny_model, small_set, tmp_path):
    _, processor = tiny_model
    victim = sorted((small_set / "wav").iterdir())[0]
    victim.write_bytes(b"not a wav file at all")
    with pytest.raises(DataError, match=victim.name):
        build_dataset([str(small_set / "set.jsonl")], processor, DataConfig(cache_dir=str(tmp_path / "a")))
    dataset, report = build_dataset(
        [str(small_set / "set.jsonl")], processor, DataConfig(cache_dir=str(tmp_path / "b"), on_bad_data="skip")
    )
    assert report.dropped["unreadable audio"] == 1 and len(dataset) == 5
    assert any(victim.name in str(problem) and problem.severity == "error" for problem in report.problems)
    assert report.to_dict()["dropped"] == {"unreadable audio": 1}


def test_resampled_and_stereo_audio_is_reported(tiny_model, broken_dir, tmp_path):
    import json as _json

    _, processor = tiny_model
    rows = [{"key": "a", "wav": "sr8000.wav", "txt": "八千"}, {"key": "b", "wav": "stereo.wav", "txt": "立体声"}]
    (broken_dir / "ok_mixed.jsonl").write_text("\n".join(_json.dumps(r, ensure_ascii=False) for r in rows) + "\n")
    config = DataConfig(cache_dir=str(tmp_path))
    dataset, report = build_dataset([str(broken_dir / "ok_mixed.jsonl")], processor, config)
    assert len(dataset) == 2
    assert [p.severity for p in report.problems] == ["warning", "warning"]
    assert any("resampled from 8000 Hz" in str(p) for p in report.problems)
    assert any("downmixed 2 channels" in str(p) for p in report.problems)


def test_training_ids_equal_the_processors(tiny_model):
    """The batched ids (`TrainingIds`: one tokenizer call for the transcripts, each prompt encoded once) are the
    processor's own, for FunASR's instructions, transcripts with special-token text, and clips too short for
    an audio token."""
    _, processor = tiny_model
    instructions = [None, "", "语音转写：", "Speech transcription:", "语音转写成英文，不进行文本规整：",
                    "热词列表：[阿里, 通义]\n语音转写："]  # fmt: skip
    texts = ["明天是星期天", "zero one one zero five", "a <|im_end|> typed", "<|startofspeech|>x", " lead space"]
    cases = [(t, i, f) for t in texts for i in instructions for f in (0, 1, 7, 8, 9, 100, 333)]
    ids = TrainingIds(processor)
    built = ids.build([c[0] for c in cases], [c[1] for c in cases], [c[2] for c in cases])
    prompts, tokens = ids.lengths([c[0] for c in cases], [c[1] for c in cases], [c[2] for c in cases])
    for (text, instruction, frames), got, prompt, count in zip(cases, built, prompts, tokens, strict=True):
        expected = processor.build_training_ids(frames, text, instruction)
        assert got == expected, (text, instruction, frames)
        assert (prompt, count) == (expected["prompt_length"], len(expected["input_ids"]) - prompt)


def test_vectorised_filter_agrees_with_drop_reason():
    rng = np.random.default_rng(0)
    frames, texts, llm = (rng.integers(0, 3000, 4000), rng.integers(0, 300, 4000), rng.integers(0, 2500, 4000))
    for config in (
        DataConfig(),
        DataConfig(batch_type="token"),
        DataConfig(batch_type="length", max_token_length=1200, min_source_length=50, max_target_length=120),
        DataConfig(max_token_length=900),
    ):
        mask = dropped(frames, texts, llm, config)
        expected = [bool(drop_reason(int(f), int(t), int(n), config)) for f, t, n in zip(frames, texts, llm)]
        assert mask.tolist() == expected
        assert 0 < mask.sum() < len(mask)


def test_the_cache_holds_the_records_once_and_lengths_only(tiny_model, small_set, tmp_path):
    """On the fly, the cache keeps the records (one Arrow table, a gzipped copy naming it) and the small length
    columns: no token ids, no second copy of the records; the ids come with each example when it is read."""
    _, processor = tiny_model
    cache = tmp_path / "c"
    dataset, _ = build_dataset([str(small_set / "set.jsonl")], processor, DataConfig(cache_dir=str(cache)))
    assert "input_ids" not in plain(dataset).column_names
    assert [p.suffixes[-2:] for p in (cache / "manifests").iterdir()] == [[".jsonl", ".gz"]]
    tables = {}
    for path in (cache / "datasets").rglob("*.arrow"):
        with pa.memory_map(str(path)) as source:
            tables[path.name] = pa.ipc.open_stream(source).schema.names
    records = [names for name, names in tables.items() if name.endswith("-train.arrow")]
    assert len(records) == 1 and {"audio", "text", "source"} <= set(records[0])
    others = [names for name, names in tables.items() if not name.endswith("-train.arrow")]
    assert others and all(set(names) <= {"index", "num_samples", "num_frames", "prompt_length", "num_tokens",
                                         "error", "note"} for names in others)  # fmt: skip
    row = dataset[0]
    assert row["input_ids"] and len(row["input_ids"]) == row["prompt_length"] + row["num_tokens"]
