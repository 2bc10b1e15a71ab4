"""Parity with FunASR's own implementation on a tiny checkpoint FunASR built (same random weights).

eval mode, frontend dither 0, fp32. FunASR runs through `funasr.AutoModel` and its own methods
(`FunASRReference`); ours through `load_pretrained` + the processor. Each stage is compared.
"""

from __future__ import annotations

import glob

import numpy as np
import pytest
import soundfile as sf
import torch

from funasr_nano_hf.data.collator import FunAsrNanoCollator
from funasr_nano_hf.inference import generate_ids
from funasr_nano_hf.models import prompting

TRANSCRIPT = "我想问我在滨海新区有房"


def _wav(path) -> np.ndarray:
    waveform, rate = sf.read(str(path), dtype="float32")
    assert rate == 16000
    return waveform


def _tts_clips(shared_dir, n=3):
    return sorted(glob.glob(str(shared_dir / "data" / "tts" / "wav" / "valid" / "*.wav")))[:n]


def test_features_bit_exact(tiny_model, tiny_reference, sample_wav):
    _, processor = tiny_model
    waveform = _wav(sample_wav)
    ref, ref_lens = tiny_reference.features(torch.from_numpy(waveform))
    ours = processor.feature_extractor([waveform], return_tensors="pt")
    assert ours["input_features"].shape == ref.shape == (1, 100, 560)
    assert int(ours["input_features_mask"].sum()) == int(ref_lens[0])
    torch.testing.assert_close(ours["input_features"], ref, rtol=0, atol=0)


def test_encoder_adaptor_and_token_count(tiny_model, tiny_reference, sample_wav):
    model, processor = tiny_model
    feats = processor.feature_extractor([_wav(sample_wav)], return_tensors="pt")
    ref_encoder, ref_adaptor = tiny_reference.encode(feats["input_features"], feats["input_features_mask"].sum(-1))
    with torch.no_grad():
        ours = model.model.get_audio_features(feats["input_features"], feats["input_features_mask"])
    torch.testing.assert_close(ours.last_hidden_state, ref_encoder, rtol=0, atol=1e-5)
    # Tight: the adaptor LayerNorm eps (1e-12 in FunASR, 1e-5 stock) shows up at this level.
    torch.testing.assert_close(ours.adaptor_hidden_states, ref_adaptor, rtol=1e-6, atol=2e-6)
    # ceil(100 / 8) = 13 tokens, the FIRST 13 adaptor frames (FunASR's fake_token_len).
    assert ours.audio_token_lengths.tolist() == [13]
    torch.testing.assert_close(ours.pooler_output, ref_adaptor[0, :13], rtol=1e-6, atol=2e-6)


def test_prompt_ids_and_labels_match_funasr(tiny_model, tiny_reference, sample_wav):
    _, processor = tiny_model
    instruction = prompting.instruction()
    _, batch, _, _ = tiny_reference.prepare(str(sample_wav), instruction, TRANSCRIPT, teacherforcing=True)
    example = processor.build_training_example(_wav(sample_wav), TRANSCRIPT, instruction)
    ours = torch.tensor(example["input_ids"])
    ref = batch["input_ids"][0]
    audio = ours == processor.audio_token_id
    assert ours.shape == ref.shape
    assert int(audio.sum()) == int(batch["fake_token_len"][0, 0]) == 13
    assert int(audio.nonzero()[0]) == int(batch["fbank_beg"][0, 0])
    assert torch.equal(ours[~audio], ref[~audio])
    assert example["labels"] == batch["labels_ids"].flatten().tolist()


def test_teacher_forced_logits_and_loss(tiny_model, tiny_reference, sample_wav):
    model, processor = tiny_model
    instruction = prompting.instruction()
    ref_logits, ref_loss, _ = tiny_reference.teacher_forced(str(sample_wav), instruction, TRANSCRIPT)
    example = processor.build_training_example(_wav(sample_wav), TRANSCRIPT, instruction)
    with torch.no_grad():
        out = model(**FunAsrNanoCollator(pad_token_id=processor.tokenizer.pad_token_id)([example]))
    assert (out.logits - ref_logits).abs().max().item() <= 1e-4
    assert abs(out.loss.item() - ref_loss.item()) <= 1e-5


@pytest.mark.parametrize("clip", ["sample", "tts0", "tts1", "tts2"])
def test_greedy_tokens_identical(tiny_model, tiny_reference, shared_dir, sample_wav, clip):
    model, processor = tiny_model
    path = sample_wav if clip == "sample" else _tts_clips(shared_dir)[int(clip[-1])]
    instruction = prompting.instruction()
    ref = tiny_reference.greedy(str(path), instruction, max_new_tokens=20)
    ours = generate_ids(model, processor, [_wav(path)], max_new_tokens=20)[0].tolist()
    assert len(set(ref)) > 3, "the tiny model must decode varied tokens for this test to mean anything"
    assert ours == ref


def test_padded_batch_equals_one_by_one(tiny_model, shared_dir):
    """Clips of different lengths in one padded batch: same per-sample logits and tokens as alone."""
    model, processor = tiny_model
    paths = [shared_dir / "data" / "real" / name for name in ("sample.wav", "asr_example.wav", "mid.wav")]
    waveforms = [_wav(p) for p in paths] + [_wav(p) for p in _tts_clips(shared_dir, 2)]
    batch = processor.prepare_transcription(waveforms)
    with torch.no_grad():
        batched_logits = model(**batch).logits
        for row, waveform in enumerate(waveforms):
            single = processor.prepare_transcription([waveform])
            logits = model(**single).logits[0]
            assert (batched_logits[row, -logits.shape[0] :] - logits).abs().max().item() <= 1e-4
    one_by_one = [generate_ids(model, processor, [w], max_new_tokens=12)[0].tolist() for w in waveforms]
    together = generate_ids(model, processor, waveforms, max_new_tokens=12).tolist()
    assert together == one_by_one
