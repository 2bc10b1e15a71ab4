"""The bundled default (examples/bundled): a small Fun-ASR-Nano in the ORIGINAL FunASR layout, pretrained
by examples/bundled/pretrain.py, that the README's main command fine-tunes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import soundfile as sf
import torch

from funasr_nano_hf import load_pretrained, transcribe
from funasr_nano_hf.conversion.loading import detect_layout, read_model_pt
from funasr_nano_hf.evaluation import compute_cer
from funasr_nano_hf.inference import generate_ids
from funasr_nano_hf.models.prompting import instruction

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
BUNDLED = EXAMPLES / "bundled"


def _rows(name: str) -> list[dict]:
    manifest = BUNDLED / "data" / f"{name}.jsonl"
    return [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines()]


def test_original_layout_and_size():
    model_dir = BUNDLED / "model"
    assert detect_layout(model_dir) == "original"
    total = sum(p.stat().st_size for p in model_dir.rglob("*") if p.is_file())
    assert total <= 20 * 2**20, f"{total / 2**20:.1f} MiB"
    assert (model_dir / "Qwen3-0.6B" / "tokenizer.json").is_file()
    state = read_model_pt(model_dir / "model.pt")
    assert {v.dtype for v in state.values() if v.is_floating_point()} == {torch.bfloat16}
    assert sum(v.numel() for k, v in state.items() if k != "llm.lm_head.weight") > 5_000_000


def test_data_splits_are_disjoint_and_present():
    train, heldout, domain_a = _rows("train"), _rows("heldout"), _rows("pretrain_domain")
    assert len(train) >= 100 and len(heldout) >= 30
    assert not {r["txt"] for r in train} & {r["txt"] for r in heldout}
    assert not {r["txt"] for r in domain_a} & {r["txt"] for r in train + heldout}
    for row in train + heldout + domain_a:
        assert (BUNDLED / "data" / row["wav"]).is_file(), row


def test_funasr_decodes_the_bundled_model_like_us():
    """FunASR's own FunASRNano on the shipped weights: the same greedy tokens as our model."""
    from funasr_nano_hf.testing.funasr_reference import FunASRReference

    model, processor = load_pretrained(BUNDLED / "model")
    reference = FunASRReference(BUNDLED / "model")
    for row in _rows("heldout")[:3]:
        wav = str(BUNDLED / "data" / row["wav"])
        ids = generate_ids(model, processor, [sf.read(wav, dtype="float32")[0]], max_new_tokens=24)[0].tolist()
        assert ids == reference.greedy(wav, instruction(), max_new_tokens=24), wav


def _cer(model, processor, name: str) -> float:
    rows = _rows(name)
    predictions = transcribe(model, processor, [str(BUNDLED / "data" / r["wav"]) for r in rows], batch_size=20)
    return compute_cer(predictions, [r["txt"] for r in rows])["cer"]


def test_pretrained_on_its_domain_and_lost_on_the_new_one():
    """The pretraining worked (its own domain, unseen sentences: CER ~0.2; a random model scores >= 1), and the
    fine-tuning domain/voices are really new to it (CER ~1)."""
    model, processor = load_pretrained(BUNDLED / "model")
    assert _cer(model, processor, "pretrain_domain") < 0.4
    assert _cer(model, processor, "heldout") > 0.8


@pytest.mark.slow
def test_readme_main_command_fine_tunes_to_a_large_cer_drop(tmp_path):
    """examples/demo.py (what `bash examples/demo.sh` runs): LoRA on the fine-tuning set, CER on the held-out."""
    sys.path.insert(0, str(EXAMPLES))
    try:
        import demo
    finally:
        sys.path.remove(str(EXAMPLES))
    result = demo.main(["--output_dir", str(tmp_path / "demo")])
    assert result["cer_after"] < 0.5 * result["cer_before"], result
