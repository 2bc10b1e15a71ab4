"""A `datasets.IterableDataset` with an Audio column (what ``load_dataset(..., streaming=True)`` returns) trained as
a stream (`StreamingBatches.from_datasets`): every example once per epoch over ranks and real DataLoader workers
(datasets' own per-worker split must not apply a second time), token-budget batches, the map-style path's
examples, exact resume, bad rows named, and the real Trainer training on it."""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from funasr_nano_hf.data.augmentation import Augmentation
from funasr_nano_hf.data.collator import FunAsrNanoCollator
from funasr_nano_hf.data.featurize import DataConfig, text_length
from funasr_nano_hf.data.hf_audio import build_dataset_from_hf
from funasr_nano_hf.data.streaming import StreamingBatches
from funasr_nano_hf.errors import DataError

CLIPS = 16
BUDGET = 2500


@pytest.fixture(scope="module")
def clips(shared_dir) -> list[dict]:
    """The first CLIPS shared training clips: key, absolute wav path, transcript."""
    tts = shared_dir / "data" / "tts"
    rows = [json.loads(line) for line in (tts / "train.jsonl").read_text(encoding="utf-8").splitlines()[:CLIPS]]
    return [{"id": r["key"], "audio": str((tts / r["wav"]).resolve()), "text": r["txt"]} for r in rows]


def _map_style(clips: list[dict], *, embed: bool = False) -> datasets.Dataset:
    audio = [{"bytes": Path(c["audio"]).read_bytes(), "path": None} if embed else c["audio"] for c in clips]
    columns = {"id": [c["id"] for c in clips], "audio": audio, "sentence": [c["text"] for c in clips]}
    return datasets.Dataset.from_dict(columns).cast_column("audio", datasets.Audio())


def _stream(dataset, processor, **options) -> StreamingBatches:
    options = {
        "text_column": "sentence",
        "key_column": "id",
        "batch_size": BUDGET,
        "sort_size": 8,
        "seed": 3,
        **options,
    }
    return StreamingBatches.from_datasets(dataset, processor, DataConfig(), **options)


def _keys(batches) -> list[list[str]]:
    return [[e["key"] for e in batch] for batch in batches]


@pytest.mark.parametrize("shards", [4, 3])  # 4: whole shards per slot; 3: one example in 4 per slot
def test_every_example_once_per_epoch_over_ranks_and_workers(tiny_model, clips, shards):
    _, processor = tiny_model
    hub = _map_style(clips, embed=shards == 3).to_iterable_dataset(num_shards=shards)
    for epoch in (0, 1):
        seen = Counter()
        for slot in range(4):  # 2 ranks x 2 workers
            for batch in _stream(hub, processor).epoch_batches(epoch, slot, 4):
                longest = max(e["num_frames"] + text_length(e["num_tokens"]) for e in batch)
                assert longest * len(batch) <= BUDGET or len(batch) == 1  # FunASR's padded token budget
                seen.update(e["key"] for e in batch)
        assert set(seen) == {c["id"] for c in clips} and set(seen.values()) == {1}
    # the read order (one example per buffer: no length sorting) is reshuffled per epoch
    first, second = (_keys(_stream(hub, processor, sort_size=1).epoch_batches(e)) for e in (0, 1))
    assert first != second and sorted(first) == sorted(second)


def _read_keys(batch: list[dict]) -> list[str]:
    return [example["key"] for example in batch]


@pytest.mark.slow
def test_real_workers_split_once_two_ranks_two_workers(tiny_model, clips):
    """In DataLoader workers, datasets would split shards by worker again if iterated with ``for row in ds``:
    2 ranks x 2 real workers together read every example exactly once."""
    _, processor = tiny_model
    hub = _map_style(clips).to_iterable_dataset(num_shards=4)
    seen = Counter()
    for rank in range(2):
        stream = _stream(hub, processor, rank=rank, world_size=2, epochs=1)
        loader = DataLoader(stream, batch_size=None, collate_fn=_read_keys, num_workers=2)
        seen.update(key for keys in loader for key in keys)
    assert set(seen) == {c["id"] for c in clips} and set(seen.values()) == {1}


def test_stream_examples_equal_the_map_style_path(tiny_model, clips, tmp_path):
    """Same prompt ids and features (no augmentation) as `build_dataset_from_hf` on the same rows; bytes
    embedded (as a hub dataset has them) are read by soundfile."""
    _, processor = tiny_model
    rows = _map_style(clips, embed=True)
    options = {"text_column": "sentence", "key_column": "id"}
    dataset, _ = build_dataset_from_hf(rows, processor, DataConfig(cache_dir=str(tmp_path)), **options)
    by_key = {row["key"]: row for row in dataset}
    batch = next(iter(_stream(rows.to_iterable_dataset(num_shards=2), processor)))
    for example in batch:
        np.testing.assert_array_equal(example["input_features"], by_key[example["key"]]["input_features"])
        assert example["input_ids"] == by_key[example["key"]]["input_ids"]
        assert example["labels"] == by_key[example["key"]]["labels"]


def _loader_batches(stream, processor, workers: int, count: int) -> list[dict]:
    collator = FunAsrNanoCollator(pad_token_id=processor.tokenizer.pad_token_id)
    out = []
    for batch in DataLoader(stream, batch_size=None, collate_fn=collator, num_workers=workers):
        out.append(batch)
        if len(out) == count:
            break
    return out


@pytest.mark.slow
def test_resume_yields_the_uninterrupted_batches(tiny_model, clips):
    """Resumed after 5 batches (2 real workers, so the resumed worker order rotates; the stream runs into its
    second epoch), the stream continues with batch 5 of the uninterrupted one, dithered features bit-equal."""
    _, processor = tiny_model
    hub = _map_style(clips).to_iterable_dataset(num_shards=3)
    augmentation = Augmentation(dither=1.0, seed=3)
    whole = _loader_batches(_stream(hub, processor, augmentation=augmentation), processor, 2, 9)
    resumed_stream = _stream(hub, processor, augmentation=augmentation)
    resumed_stream.set_skip(5)
    resumed = _loader_batches(resumed_stream, processor, 2, 4)
    for a, b in zip(whole[5:], resumed, strict=True):
        assert a.keys() == b.keys()
        for name in a:
            assert torch.equal(a[name], b[name]), name


def _with_bad_rows(clips: list[dict]) -> datasets.IterableDataset:
    """Six clips (bytes embedded), a row of undecodable bytes and a row with an empty transcript."""
    audio = [{"bytes": Path(c["audio"]).read_bytes(), "path": None} for c in clips[:6]]
    audio += [{"bytes": np.random.default_rng(0).bytes(2000), "path": None}, audio[0]]
    columns = {
        "id": [c["id"] for c in clips[:6]] + ["garbled", "silent_text"],
        "audio": audio,
        "sentence": [c["text"] for c in clips[:6]] + ["坏文件", "  "],
    }
    return datasets.Dataset.from_dict(columns).cast_column("audio", datasets.Audio()).to_iterable_dataset()


def test_bad_rows_are_skipped_and_named_or_stop(tiny_model, clips, caplog):
    _, processor = tiny_model
    hub = _with_bad_rows(clips)
    config = DataConfig(on_bad_data="skip")
    options = {"text_column": "sentence", "key_column": "id", "batch_size": BUDGET, "sort_size": 8, "seed": 3}
    with caplog.at_level(logging.WARNING, logger="funasr_nano_hf.data.streaming"):
        stream = StreamingBatches.from_datasets(hub, processor, config, **options)
        keys = [key for batch in stream.epoch_batches(0) for key in _read_keys(batch)]
    assert sorted(keys) == sorted(c["id"] for c in clips[:6])
    assert "garbled" in caplog.text and "silent_text" in caplog.text and "2 dropped" in caplog.text
    stop = StreamingBatches.from_datasets(hub, processor, DataConfig(on_bad_data="stop"), **options)
    with pytest.raises(DataError, match="garbled|silent_text"):
        list(stop.epoch_batches(0))


def test_missing_columns_and_a_stream_given_to_the_map_style_call(tiny_model, clips):
    _, processor = tiny_model
    hub = _map_style(clips).to_iterable_dataset()
    with pytest.raises(ValueError, match=r"\['transcript'\] not in the dataset.*sentence"):
        StreamingBatches.from_datasets(hub, processor, DataConfig(), text_column="transcript", batch_size=BUDGET)
    with pytest.raises(ValueError, match="split 'test' not in the IterableDatasetDict"):
        StreamingBatches.from_datasets(datasets.IterableDatasetDict({"train": hub}), processor, DataConfig(),
                                       split="test", batch_size=BUDGET)  # fmt: skip
    with pytest.raises(TypeError, match="StreamingBatches.from_datasets"):
        build_dataset_from_hf(hub, processor, DataConfig(), text_column="sentence")


def test_a_streamed_json_file_of_paths(tiny_model, clips, tmp_path):
    """``load_dataset("json", streaming=True)`` (untyped: features read from the first rows; audio as path
    strings, cast to Audio) streams every example."""
    _, processor = tiny_model
    manifest = tmp_path / "rows.jsonl"
    manifest.write_text("\n".join(json.dumps(c, ensure_ascii=False) for c in clips) + "\n", encoding="utf-8")
    hub = datasets.load_dataset("json", data_files=str(manifest), split="train", streaming=True)
    stream = StreamingBatches.from_datasets(hub, processor, DataConfig(), key_column="id", batch_size=BUDGET)
    keys = [key for batch in stream.epoch_batches(0) for key in _read_keys(batch)]
    assert sorted(keys) == sorted(c["id"] for c in clips)


def test_the_trainer_trains_two_steps_on_a_datasets_stream(tiny_original_dir, clips, tmp_path):
    from transformers import TrainingArguments

    from funasr_nano_hf import load_pretrained
    from funasr_nano_hf.training.arguments import ModelArguments
    from funasr_nano_hf.training.model_setup import prepare_model_for_finetuning
    from funasr_nano_hf.training.trainer import FunAsrNanoTrainer

    model, processor = load_pretrained(tiny_original_dir)
    model = prepare_model_for_finetuning(model, ModelArguments(model_dir=str(tiny_original_dir)))
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    hub = datasets.IterableDatasetDict({"train": _map_style(clips).to_iterable_dataset(num_shards=2)})
    stream = _stream(hub, processor, batch_size=1200, augmentation=Augmentation(dither=1.0, seed=7))
    args = TrainingArguments(
        str(tmp_path), max_steps=2, per_device_train_batch_size=1200, learning_rate=5e-3, warmup_steps=1,
        use_cpu=True, report_to=[], disable_tqdm=True, save_strategy="no", logging_steps=1, remove_unused_columns=False,
    )  # fmt: skip
    collator = FunAsrNanoCollator(pad_token_id=processor.tokenizer.pad_token_id)
    trainer = FunAsrNanoTrainer(model, args, collator, stream, processor=processor)
    result = trainer.train()
    assert trainer.state.global_step == 2 and np.isfinite(result.training_loss)
    assert [e["step"] for e in trainer.state.log_history if "loss" in e] == [1, 2]
    after = dict(model.named_parameters())
    assert any(not torch.equal(before[n], after[n].detach()) for n in before)


@pytest.mark.slow
def test_the_trainer_resumes_a_datasets_stream_exactly(tiny_original_dir, clips, tmp_path):
    """Resumed from the checkpoint at step 2 of a 4-step run (the stream replays its first 2 batches' formation),
    the Trainer ends with the uninterrupted run's losses and weights, bit for bit."""
    from transformers import TrainingArguments

    from funasr_nano_hf import load_pretrained
    from funasr_nano_hf.training.arguments import ModelArguments
    from funasr_nano_hf.training.model_setup import prepare_model_for_finetuning
    from funasr_nano_hf.training.trainer import FunAsrNanoTrainer

    hub = _map_style(clips).to_iterable_dataset(num_shards=2)

    def run(out: Path, resume: str | None = None):
        model, processor = load_pretrained(tiny_original_dir)
        model = prepare_model_for_finetuning(model, ModelArguments(model_dir=str(tiny_original_dir)))
        stream = _stream(hub, processor, batch_size=1200, augmentation=Augmentation(dither=1.0, seed=7))
        args = TrainingArguments(
            str(out), max_steps=4, per_device_train_batch_size=1200, learning_rate=5e-3, warmup_steps=1, seed=7,
            use_cpu=True, report_to=[], disable_tqdm=True, save_strategy="steps", save_steps=2, logging_steps=1,
            remove_unused_columns=False, dataloader_num_workers=2,
        )  # fmt: skip
        collator = FunAsrNanoCollator(pad_token_id=processor.tokenizer.pad_token_id)
        trainer = FunAsrNanoTrainer(model, args, collator, stream, processor=processor)
        trainer.train(resume_from_checkpoint=resume)
        losses = [(e["step"], e["loss"]) for e in trainer.state.log_history if "loss" in e]
        return losses, {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    whole_losses, whole = run(tmp_path / "whole")
    resumed_losses, resumed = run(tmp_path / "resumed", resume=str(tmp_path / "whole" / "checkpoint-2"))
    assert [s for s, _ in whole_losses] == [1, 2, 3, 4] and resumed_losses == whole_losses  # 1-2 from the checkpoint
    assert whole.keys() == resumed.keys()
    for name in whole:
        assert torch.equal(whole[name], resumed[name]), name
