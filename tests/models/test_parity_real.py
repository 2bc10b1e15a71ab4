"""Parity at the REAL Fun-ASR-Nano-2512 architecture (70-layer SAN-M encoder, 2-layer adaptor,
Qwen3-0.6B), random seeded weights built and saved by FunASR's own `FunASRNano` in the original layout.

Slow (a ~2 GB model.pt, two 0.8B models in memory) but run in CI.
"""

from __future__ import annotations

import gc

import pytest
import soundfile as sf
import torch

from funasr_nano_hf import load_pretrained
from funasr_nano_hf.conversion.loading import read_model_pt
from funasr_nano_hf.conversion.original_layout import hf_to_original, layout_from_config, original_to_hf
from funasr_nano_hf.data.collator import FunAsrNanoCollator
from funasr_nano_hf.inference import generate_ids
from funasr_nano_hf.models import prompting
from funasr_nano_hf.testing.funasr_checkpoint import write_original_checkpoint

pytestmark = pytest.mark.slow

TRANSCRIPT = "我想问我在滨海新区有房"


@pytest.fixture(scope="module")
def real_dir(tmp_path_factory):
    path = write_original_checkpoint(tmp_path_factory.mktemp("real_original"), size="real", seed=0)
    gc.collect()
    return path


@pytest.fixture(scope="module")
def real_pair(real_dir):
    from funasr_nano_hf.testing.funasr_reference import FunASRReference

    reference = FunASRReference(real_dir)
    model, processor = load_pretrained(real_dir)
    yield reference, model, processor
    del reference, model
    gc.collect()


def test_every_tensor_maps_both_ways(real_dir, real_pair):
    _, model, _ = real_pair
    import yaml

    conf = yaml.safe_load((real_dir / "config.yaml").read_text())
    original = read_model_pt(real_dir / "model.pt")
    assert len(original) == 1261  # encoder 914 + adaptor 36 + llm 311, as the released file
    ours, extras = original_to_hf(original, layout_from_config(conf))
    assert extras == {}
    expected = model.state_dict()
    assert set(ours) == set(expected)
    for key, value in ours.items():
        assert tuple(value.shape) == tuple(expected[key].shape), key
    assert sum(p.numel() for p in model.parameters()) == 829_791_840
    back = hf_to_original({k: v.to(torch.bfloat16) for k, v in expected.items()}, layout_from_config(conf))
    assert set(back) == set(original)
    for key, value in original.items():
        assert torch.equal(back[key], value), key


def test_real_size_logits_and_greedy_tokens(real_pair, sample_wav):
    reference, model, processor = real_pair
    waveform, _ = sf.read(str(sample_wav), dtype="float32")
    instruction = prompting.instruction()
    ref_logits, ref_loss, _ = reference.teacher_forced(str(sample_wav), instruction, TRANSCRIPT)
    example = processor.build_training_example(waveform, TRANSCRIPT, instruction)
    with torch.no_grad():
        out = model(**FunAsrNanoCollator(pad_token_id=processor.tokenizer.pad_token_id)([example]))
    assert (out.logits - ref_logits).abs().max().item() <= 1e-4
    assert abs(out.loss.item() - ref_loss.item()) <= 1e-4
    ref_ids = reference.greedy(str(sample_wav), instruction, max_new_tokens=12)
    ours = generate_ids(model, processor, [waveform], max_new_tokens=12)[0].tolist()
    assert ours == ref_ids
