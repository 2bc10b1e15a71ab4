"""On-the-fly features (the default) against precomputed ones, loader workers, augmentation, bad audio at load."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from torch.utils.data import DataLoader

from funasr_nano_hf.data.augmentation import Augmentation
from funasr_nano_hf.data.collator import SKIPPED_FIELD, FunAsrNanoCollator
from funasr_nano_hf.data.featurize import DataConfig, build_dataset, plain, set_epoch, source_lengths
from funasr_nano_hf.data.samplers import build_batch_sampler
from funasr_nano_hf.errors import DataError


@pytest.fixture()
def clip_set(shared_dir, tmp_path) -> Path:
    """Eight training clips copied into tmp (the audio can be changed afterwards), one of them resampled to 8 kHz."""
    tts = shared_dir / "data" / "tts"
    rows = [json.loads(line) for line in tts.joinpath("train.jsonl").read_text(encoding="utf-8").splitlines()[:8]]
    (tmp_path / "wav").mkdir()
    for row in rows:
        shutil.copy(tts / row["wav"], tmp_path / "wav" / Path(row["wav"]).name)
        row["wav"] = "wav/" + Path(row["wav"]).name
    audio, rate = sf.read(str(tmp_path / rows[0]["wav"]), dtype="float32")
    sf.write(str(tmp_path / "wav" / "sr8k.wav"), audio[::2], rate // 2)
    rows.append({"key": "sr8k", "wav": "wav/sr8k.wav", "txt": rows[0]["txt"]})
    (tmp_path / "set.jsonl").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n")
    return tmp_path


def _batches(dataset, processor, num_workers: int = 0, epoch: int = 0) -> list[dict]:
    sampler = build_batch_sampler("token", source_lengths(dataset), batch_size=2500, seed=3)
    sampler.set_epoch(epoch)
    set_epoch(dataset, epoch)
    collator = FunAsrNanoCollator(pad_token_id=processor.tokenizer.pad_token_id)
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collator, num_workers=num_workers)
    return list(loader)


def _assert_same(first: list[dict], second: list[dict]) -> None:
    assert len(first) == len(second) > 1
    for a, b in zip(first, second):
        assert a.keys() == b.keys()
        for name in a:
            assert torch.equal(a[name], b[name]), name


def test_on_the_fly_and_precomputed_give_identical_batches(tiny_model, clip_set, tmp_path):
    _, processor = tiny_model
    config = DataConfig(cache_dir=str(tmp_path / "c"))
    manifest = [str(clip_set / "set.jsonl")]
    lazy, lazy_report = build_dataset(manifest, processor, config)
    eager, eager_report = build_dataset(manifest, processor, config, precompute_features=True)
    assert lazy.format["type"] == "custom" and len(lazy) == len(eager) == 9
    assert lazy_report.to_dict() == eager_report.to_dict()
    for i in range(len(lazy)):
        features = lazy[i]["input_features"]
        assert isinstance(features, np.ndarray) and isinstance(eager[i]["input_features"], np.ndarray)
        np.testing.assert_array_equal(features, eager[i]["input_features"])  # bit-equal
        waveform, _ = sf.read(lazy[i]["audio"], dtype="float32")
        if lazy[i]["key"] != "sr8k":
            expected = processor.build_training_example(waveform, lazy[i]["text"], lazy[i]["instruction"])
            np.testing.assert_array_equal(features, expected["input_features"])
            assert lazy[i]["input_ids"] == expected["input_ids"] and lazy[i]["labels"] == expected["labels"]
    _assert_same(_batches(lazy, processor), _batches(eager, processor))


def test_two_workers_give_the_batches_of_none_with_augmentation(tiny_model, clip_set, tmp_path):
    _, processor = tiny_model
    config = DataConfig(cache_dir=str(tmp_path / "c"))
    dataset, _ = build_dataset([str(clip_set / "set.jsonl")], processor, config, augmentation=Augmentation(1.0, 7))
    _assert_same(_batches(dataset, processor, num_workers=0, epoch=1), _batches(dataset, processor, 2, epoch=1))


def test_workers_tokenise_without_hanging_under_tokenizers_parallelism(tiny_model, clip_set, tmp_path, monkeypatch):
    """The loader workers build each example's ids with the tokenizer. TOKENIZERS_PARALLELISM=true keeps the thread
    pool a forked worker inherits from a parent that used it, broken: the workers must not use it (a hang would
    trip the loader's timeout), and give the batches of no workers."""
    _, processor = tiny_model
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "true")
    dataset, _ = build_dataset([str(clip_set / "set.jsonl")], processor, DataConfig(cache_dir=str(tmp_path / "c")))
    processor.tokenizer(["zero one two", "明天是星期天"] * 64)  # the parent's pool is used before the workers fork
    sampler = build_batch_sampler("token", source_lengths(dataset), batch_size=2500, seed=3)
    collator = FunAsrNanoCollator(pad_token_id=processor.tokenizer.pad_token_id)
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collator, num_workers=2, timeout=60)
    _assert_same(list(loader), _batches(dataset, processor))


def test_augmentation_is_training_only_and_reproducible_per_seed(tiny_model, clip_set, tmp_path):
    _, processor = tiny_model
    config = DataConfig(cache_dir=str(tmp_path / "c"))
    manifest = [str(clip_set / "set.jsonl")]

    def features(augmentation, epoch=0, index=1) -> np.ndarray:
        dataset, _ = build_dataset(manifest, processor, config, augmentation=augmentation)
        set_epoch(dataset, epoch)
        return dataset[index]["input_features"]

    clean = features(None)
    dithered = features(Augmentation(dither=1.0, seed=5))
    assert dithered.shape == clean.shape and not np.array_equal(dithered, clean)
    np.testing.assert_array_equal(dithered, features(Augmentation(dither=1.0, seed=5)))  # same (seed, epoch, index)
    assert not np.array_equal(dithered, features(Augmentation(dither=1.0, seed=6)))
    assert not np.array_equal(dithered, features(Augmentation(dither=1.0, seed=5), epoch=1))
    np.testing.assert_array_equal(clean, features(Augmentation(dither=0.0, seed=5)))  # off: FunASR's clean fbank
    # precomputed (evaluation) features are clean whatever augmentation is asked for
    eager, _ = build_dataset(manifest, processor, config, precompute_features=True, augmentation=Augmentation(1.0, 5))
    np.testing.assert_array_equal(eager[1]["input_features"], clean)
    # the processor the model ships with is untouched (no dither leaks into inference)
    assert processor.feature_extractor.dither == 0.0


def test_audio_that_no_longer_matches_its_header_is_caught_at_load(tiny_model, clip_set, tmp_path):
    """Lengths come from headers and are cached; audio that decodes to another length when loaded (replaced or
    truncated since) cannot match its cached ids: stopped with its name, or dropped by the collator and named."""
    _, processor = tiny_model
    manifest = [str(clip_set / "set.jsonl")]
    stop, _ = build_dataset(manifest, processor, DataConfig(cache_dir=str(tmp_path / "a")))
    skip, _ = build_dataset(manifest, processor, DataConfig(cache_dir=str(tmp_path / "b"), on_bad_data="skip"))
    victim, key = Path(stop[2]["audio"]), stop[2]["key"]
    audio, rate = sf.read(str(victim), dtype="float32")
    sf.write(str(victim), audio[: len(audio) // 2], rate)
    with pytest.raises(DataError, match=f"{key}.*header promises .* decodes to"):
        stop[2]
    collator = FunAsrNanoCollator(pad_token_id=processor.tokenizer.pad_token_id)
    batch = collator(skip.__getitems__([1, 2, 3]))
    assert batch["input_ids"].shape[0] == 2 and len(batch[SKIPPED_FIELD]) == 1
    assert victim.name in batch[SKIPPED_FIELD][0] and "set.jsonl:3" in batch[SKIPPED_FIELD][0]
    with pytest.raises(DataError, match="no example of this batch could be loaded"):
        collator(skip.__getitems__([2]))
    # precomputed: counted and named by reason
    eager, report = build_dataset(
        manifest, processor, DataConfig(cache_dir=str(tmp_path / "b"), on_bad_data="skip"), precompute_features=True
    )
    assert len(eager) == 8 and report.dropped["audio does not match its header"] == 1


def test_manifest_lengths_are_used_as_funasr_uses_them(tiny_model, clip_set, tmp_path):
    """FunASR batches and filters on the manifest's `source_len` (`speech_length`): when present it is used as is
    (the audio header still sizes the features and the prompt)."""
    _, processor = tiny_model
    rows = [json.loads(line) for line in (clip_set / "set.jsonl").read_text(encoding="utf-8").splitlines()]
    rows = [
        {"key": r["key"], "source": r["wav"], "target": r["txt"], "source_len": 1234 + i, "target_len": 3}
        for i, r in enumerate(rows)
    ]
    (clip_set / "lengths.jsonl").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n")
    dataset, _ = build_dataset([str(clip_set / "lengths.jsonl")], processor, DataConfig(cache_dir=str(tmp_path)))
    assert plain(dataset)["num_frames"] == [1234 + i for i in range(len(rows))]
    assert min(source_lengths(dataset)) >= 1234
    assert dataset[0]["input_features"].shape[0] < 1234 / 6  # the features are the audio's, not the manifest's


def test_a_datasets_audio_column_gives_the_manifest_examples(tiny_model, clip_set, tmp_path):
    """A `datasets.Dataset` with an Audio column (bytes embedded, as a hub dataset has them, or paths) becomes
    the same examples as the manifest, read by soundfile (no torchcodec)."""
    import datasets

    from funasr_nano_hf.data.hf_audio import build_dataset_from_hf

    _, processor = tiny_model
    config = DataConfig(cache_dir=str(tmp_path / "c"))
    expected, _ = build_dataset([str(clip_set / "set.jsonl")], processor, config)
    rows = [json.loads(line) for line in (clip_set / "set.jsonl").read_text(encoding="utf-8").splitlines()]
    embedded = datasets.Dataset.from_dict(
        {
            "id": [r["key"] for r in rows],
            "audio": [{"bytes": (clip_set / r["wav"]).read_bytes(), "path": None} for r in rows],
            "sentence": [r["txt"] for r in rows],
        }
    ).cast_column("audio", datasets.Audio())
    columns = {"audio": [str(clip_set / r["wav"]) for r in rows], "text": [r["txt"] for r in rows]}
    paths = datasets.DatasetDict({"train": datasets.Dataset.from_dict(columns)}).cast_column("audio", datasets.Audio())
    for source, options in ((embedded, {"text_column": "sentence", "key_column": "id"}), (paths, {})):
        dataset, report = build_dataset_from_hf(source, processor, config, **options)
        assert len(dataset) == report.usable == len(rows)
        for i in (0, len(rows) - 1):
            np.testing.assert_array_equal(dataset[i]["input_features"], expected[i]["input_features"])
            assert dataset[i]["input_ids"] == expected[i]["input_ids"]
