"""SpecAugment and speed perturbation: FunASR's semantics (its own `SpecAugLFR` as the reference for the mask
shapes), training features only, reproducible per (seed, epoch, example), ids rebuilt for a perturbed clip."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import finetune_cmd, run, tts_subset
from torch.utils.data import DataLoader

from funasr_nano_hf.data.augmentation import (
    Augmentation,
    SpecAugConfig,
    parse_speed_perturb,
    perturb_speed,
    spec_augment,
)
from funasr_nano_hf.data.collator import FunAsrNanoCollator
from funasr_nano_hf.data.featurize import DataConfig, build_dataset, lfr_frames, plain, set_epoch
from funasr_nano_hf.data.streaming import StreamingBatches
from funasr_nano_hf.errors import DataError
from funasr_nano_hf.models.processing_funasr_nano import audio_token_count

CLIPS = 4
MELS, STACK = 80, 7  # the extractor's 80 mel bins, LFR stacks 7 frames (lfr_rate 6)


@pytest.fixture(scope="module")
def manifest(shared_dir, tmp_path_factory) -> Path:
    tts = shared_dir / "data" / "tts"
    rows = [json.loads(line) for line in (tts / "train.jsonl").read_text(encoding="utf-8").splitlines()[:CLIPS]]
    path = tmp_path_factory.mktemp("aug") / "set.jsonl"
    rows = [{**row, "wav": str((tts / row["wav"]).resolve())} for row in rows]
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    return path


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """(start, width) of each run of True in a 1-D mask."""
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    return list(zip(starts.tolist(), (ends - starts).tolist()))


def _masks(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(masked mel bins of each stacked frame (STACK, MELS), masked LFR frames) of features that are > 0 unmasked."""
    zero = features == 0
    return zero.all(axis=0).reshape(STACK, MELS), zero.all(axis=1)


def test_specaug_masks_are_within_the_configured_counts_and_widths():
    conf = SpecAugConfig(freq_mask_width_range=(3, 9), num_freq_mask=2, time_mask_width_range=(2, 6), num_time_mask=3)
    features = np.random.default_rng(0).random((60, STACK * MELS), dtype=np.float32) + 1.0
    augmentation = Augmentation(seed=1, specaug=conf)
    for index in range(200):
        out = spec_augment(features, conf, augmentation.rng(0, index, 2))
        freq, time = _masks(out)
        assert (freq == freq[0]).all()  # the same mel band in each of the 7 stacked frames (MaskAlongAxisLFR)
        bands, frames = _runs(freq[0]), _runs(time)
        assert 1 <= len(bands) <= 2 and all(w <= 2 * 8 for _, w in bands) and sum(w for _, w in bands) >= 3
        assert 1 <= len(frames) <= 3 and all(w <= 3 * 5 for _, w in frames) and sum(w for _, w in frames) >= 2
        kept = ~(np.tile(freq[0], STACK)[None, :] | time[:, None])
        np.testing.assert_array_equal(out[kept], features[kept])  # nothing else touched
    # one mask each: exactly one band, its width in [low, high)
    single = SpecAugConfig(freq_mask_width_range=(4, 7), time_mask_width_range=(1, 5))
    widths = {"freq": set(), "time": set()}
    for index in range(200):
        freq, time = _masks(spec_augment(features, single, augmentation.rng(0, index, 2)))
        ((_, freq_width),), ((_, time_width),) = _runs(freq[0]), _runs(time)
        widths["freq"].add(freq_width), widths["time"].add(time_width)
    assert widths == {"freq": {4, 5, 6}, "time": {1, 2, 3, 4}}
    # a ratio range: widths a fraction of the clip's frames (MaskAlongAxisVariableMaxWidth)
    ratio = SpecAugConfig(apply_freq_mask=False, time_mask_width_ratio_range=(0.1, 0.2))
    assert ratio.time_mask_width_range is None
    for index in range(50):
        _, time = _masks(spec_augment(features, ratio, augmentation.rng(0, index, 2)))
        assert 6 <= time.sum() <= 11  # floor(60 * 0.1) .. floor(60 * 0.2) - 1


def test_specaug_draws_the_masks_funasrs_specauglfr_draws():
    """FunASR's own module as the reference: with fixed widths, the same mask shapes and the same set of
    possible positions (frequency bands repeated per stacked frame, starts in [0, length - width))."""
    from funasr.models.specaug.specaug import SpecAugLFR

    width_f, width_t, frames, draws = 5, 3, 20, 2000
    kwargs = {"freq_mask_width_range": (width_f, width_f + 1), "num_freq_mask": 1, "lfr_rate": 6}
    kwargs |= {"time_mask_width_range": (width_t, width_t + 1), "num_time_mask": 1}
    features = np.random.default_rng(1).random((frames, STACK * MELS), dtype=np.float32) + 1.0
    torch.manual_seed(0)
    theirs, _ = SpecAugLFR(apply_time_warp=False, **kwargs)(torch.from_numpy(np.stack([features] * draws)))
    conf, augmentation = SpecAugConfig(**kwargs), Augmentation(seed=2)
    ours = np.stack([spec_augment(features, conf, augmentation.rng(0, i, 2)) for i in range(draws)])
    starts = {}
    for name, out in (("funasr", theirs.numpy()), ("ours", ours)):
        found = {"freq": set(), "time": set()}
        for example in out:
            freq, time = _masks(example)
            assert (freq == freq[0]).all()
            ((freq_start, freq_width),), ((time_start, time_width),) = _runs(freq[0]), _runs(time)
            assert (freq_width, time_width) == (width_f, width_t)
            found["freq"].add(freq_start), found["time"].add(time_start)
        starts[name] = found
    assert starts["ours"] == starts["funasr"] == {"freq": set(range(MELS - width_f)), "time": set(range(frames - 3))}


def test_bad_specaug_and_speed_options_are_named():
    with pytest.raises(ValueError, match="apply_time_warp=true is not supported"):
        SpecAugConfig.parse('{"apply_time_warp": true}')
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['num_masks'\]"):
        SpecAugConfig.parse('{"num_masks": 2}')
    with pytest.raises(ValueError, match="freq_mask_width_range: a pair"):
        SpecAugConfig.parse('{"freq_mask_width_range": [5, 5]}')
    with pytest.raises(ValueError, match="either time_mask_width_range or time_mask_width_ratio_range"):
        SpecAugConfig.parse('{"time_mask_width_range": [0, 5], "time_mask_width_ratio_range": [0, 0.1]}')
    with pytest.raises(ValueError, match="between 0.5 and 2.0"):
        parse_speed_perturb("0.9,3")
    assert parse_speed_perturb("[0.9, 1.0, 1.1]") == (0.9, 1.0, 1.1) and parse_speed_perturb(None) is None
    with pytest.raises(ValueError, match="speed_perturb"):
        DataConfig(speed_perturb="fast")
    with pytest.raises(ValueError, match="specaug is off .* add --specaug true"):
        DataConfig(specaug_conf='{"num_time_mask": 2}')


def test_speed_perturbation_changes_the_length_by_the_factor():
    waveform = np.sin(np.arange(16000, dtype=np.float32) * 0.05)
    for factor in (0.9, 1.1):
        out = perturb_speed(waveform, factor, 16000)
        assert len(out) == int(np.ceil(16000 / factor))
    assert perturb_speed(waveform, 1.0, 16000) is waveform
    draws = [Augmentation(seed=3, speed_perturb=(0.9, 1.0, 1.1)).speed(epoch, 0) for epoch in range(60)]
    assert set(draws) == {0.9, 1.0, 1.1}  # uniform over the factors, per epoch


def _features(manifest, processor, config, augmentation, epoch=0, index=1, **kwargs):
    dataset, _ = build_dataset([str(manifest)], processor, config, augmentation=augmentation, **kwargs)
    set_epoch(dataset, epoch)
    return dataset[index]


def test_specaug_changes_only_training_features_reproducibly(tiny_model, manifest, tmp_path):
    _, processor = tiny_model
    config = DataConfig(cache_dir=str(tmp_path / "c"))
    clean = _features(manifest, processor, config, None)["input_features"]
    conf = SpecAugConfig()
    masked = _features(manifest, processor, config, Augmentation(seed=5, specaug=conf))["input_features"]
    assert masked.shape == clean.shape and not np.array_equal(masked, clean)
    zero = masked == 0
    np.testing.assert_array_equal(masked[~zero], clean[~zero])  # masks only (no dither asked for)
    again = _features(manifest, processor, config, Augmentation(seed=5, specaug=conf))["input_features"]
    np.testing.assert_array_equal(masked, again)
    assert not np.array_equal(
        masked, _features(manifest, processor, config, Augmentation(seed=6, specaug=conf))["input_features"]
    )
    other_epoch = _features(manifest, processor, config, Augmentation(seed=5, specaug=conf), epoch=1)
    assert not np.array_equal(masked, other_epoch["input_features"])
    # both off: today's features, bit for bit (clean, and dithered as before)
    np.testing.assert_array_equal(clean, _features(manifest, processor, config, Augmentation(seed=5))["input_features"])
    assert DataConfig().augmentation(5) == Augmentation(dither=1.0, seed=5)
    # evaluation (precomputed) features cannot be augmented: asking is an error, not a silent no-op
    with pytest.raises(DataError, match="--specaug / --speed_perturb augment features computed on the fly"):
        _features(manifest, processor, config, Augmentation(specaug=conf), precompute_features=True)


def test_speed_perturbed_examples_have_consistent_ids_and_train(tiny_model, manifest, tmp_path):
    model, processor = tiny_model
    extractor = processor.feature_extractor
    config = DataConfig(cache_dir=str(tmp_path / "c"))
    augmentation = Augmentation(seed=4, speed_perturb=(0.9, 1.1), specaug=SpecAugConfig())
    dataset, _ = build_dataset([str(manifest)], processor, config, augmentation=augmentation)
    stored = plain(dataset)
    audio_id = processor.tokenizer.convert_tokens_to_ids(processor.audio_token)
    for epoch in (0, 1):
        set_epoch(dataset, epoch)
        examples = [dataset[i] for i in range(len(dataset))]
        for i, example in enumerate(examples):
            factor = augmentation.speed(epoch, example["index"])
            samples = int(np.ceil(stored[i]["num_samples"] / factor))
            frames = len(example["input_features"])
            assert frames == lfr_frames(samples, extractor) != lfr_frames(stored[i]["num_samples"], extractor)
            ids = example["input_ids"]
            assert ids.count(audio_id) == audio_token_count(frames, processor.audio_token_rule)
            assert example["labels"][: example["prompt_length"]] == [-100] * example["prompt_length"]
            assert example["labels"][example["prompt_length"] :] == ids[example["prompt_length"] :]
            assert example["num_frames"] == stored[i]["num_frames"]  # batching keeps the unperturbed lengths
    # the model trains on them: a collated batch of perturbed examples gives a finite loss
    batch = FunAsrNanoCollator(pad_token_id=processor.tokenizer.pad_token_id)(examples)
    with torch.no_grad():
        loss = model(**{k: v for k, v in batch.items() if isinstance(v, torch.Tensor)}).loss
    assert torch.isfinite(loss)
    # two loader workers draw what the main process draws
    set_epoch(dataset, 1)
    collator = FunAsrNanoCollator(pad_token_id=processor.tokenizer.pad_token_id)
    first = list(DataLoader(dataset, batch_size=2, collate_fn=collator, num_workers=0))
    second = list(DataLoader(dataset, batch_size=2, collate_fn=collator, num_workers=2))
    for a, b in zip(first, second, strict=True):
        for name in a:
            if isinstance(a[name], torch.Tensor):
                assert torch.equal(a[name], b[name]), name


def test_streaming_rebuilds_the_ids_of_perturbed_clips(tiny_model, manifest):
    _, processor = tiny_model
    augmentation = Augmentation(seed=4, speed_perturb=(0.9,))
    stream = StreamingBatches([str(manifest)], processor, DataConfig(), batch_size=2500, sort_size=8, seed=3,
                              augmentation=augmentation)  # fmt: skip
    audio_id = processor.tokenizer.convert_tokens_to_ids(processor.audio_token)
    batch = next(iter(stream))
    for example in batch:
        frames = len(example["input_features"])
        assert frames == lfr_frames(int(np.ceil(example["num_samples"] / 0.9)), processor.feature_extractor)
        assert example["input_ids"].count(audio_id) == audio_token_count(frames, processor.audio_token_rule)


@pytest.mark.slow  # three finetune.py runs (~40 s)
def test_finetune_trains_with_specaug_and_speed_perturbation(tiny_original_dir, shared_dir, tmp_path):
    """The options reach the run (steps on augmented training features, clean validation); bad ones are named
    before anything loads; with precomputed features they are refused."""
    data = tts_subset(shared_dir, tmp_path / "data", train=4, valid=2)
    options = (
        "--per_device_train_batch_size 2 --per_device_eval_batch_size 2 --max_steps 2 --eval_max_new_tokens 2 "
        "--use_cpu --seed 7 --num_workers 0 --log_interval 1 --specaug true --speed_perturb 0.9,1.1"
    ).split()
    out = tmp_path / "out"
    run(finetune_cmd(tiny_original_dir, data, out, *options, "--specaug_conf", '{"num_time_mask": 2}'))
    resolved = (out / "config.yaml").read_text(encoding="utf-8")
    assert "speed_perturb: 0.9,1.1" in resolved and "num_time_mask" in resolved
    assert (out / "final").is_dir()
    bad = run(finetune_cmd(tiny_original_dir, data, tmp_path / "bad", *options, "--specaug_conf", "{"), returncode=1)
    assert "--specaug_conf: not a JSON object" in bad
    cached = run(finetune_cmd(tiny_original_dir, data, tmp_path / "c", *options, "--precompute_features", "true"),
                 returncode=1)  # fmt: skip
    assert "--specaug / --speed_perturb augment features computed on the fly" in cached
