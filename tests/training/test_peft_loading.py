"""`peft.AutoPeftModel.from_pretrained(<saved adapter>)` after `import funasr_nano_hf`: adapter_config.json names the
base (the Hub id when known, else the folder) and a class that builds it; the loaded model computes what the
trained one computes. Both base layouts: a converted HF folder (transformers' Auto class, nothing else needed) and
an ORIGINAL FunASR folder (our class; peft needs ``import_allowlist=["funasr_nano_hf"]``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import tts_subset
from huggingface_hub import ModelCard
from peft import AutoPeftModel
from transformers import AutoProcessor, TrainingArguments

import funasr_nano_hf
from funasr_nano_hf import load_pretrained, save_hf_folder
from funasr_nano_hf.data.collator import FunAsrNanoCollator
from funasr_nano_hf.data.featurize import DataConfig, build_dataset
from funasr_nano_hf.training.arguments import ModelArguments
from funasr_nano_hf.training.model_card import CardInfo
from funasr_nano_hf.training.model_setup import prepare_model_for_finetuning
from funasr_nano_hf.training.trainer import FunAsrNanoTrainer


@pytest.fixture(scope="module")
def batch_and_data(tiny_original_dir, shared_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("peft_loading")
    data = tts_subset(shared_dir, root / "data", train=1, valid=3)
    _, processor = load_pretrained(tiny_original_dir)
    valid, _ = build_dataset([str(data / "valid.jsonl")], processor, DataConfig(cache_dir=str(root / "cache")))
    collate = FunAsrNanoCollator(pad_token_id=processor.tokenizer.pad_token_id)
    batch = collate([valid[i] for i in range(3)])  # three clips of different lengths, padded
    return batch, valid


def _trained_and_saved(base_dir: Path, layout: str, out: Path) -> torch.nn.Module:
    """A LoRA + trained-adaptor model with non-zero adapters, saved by the trainer into `out`."""
    model, processor = load_pretrained(base_dir)
    model = prepare_model_for_finetuning(model, ModelArguments(model_dir=str(base_dir), lora_dropout=0.0))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:  # LoRA matrices and the adaptor copy: the "trained" values
                parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    info = CardInfo(
        base_model=str(base_dir), train_data=["train.jsonl"], valid_data=[], base_model_dir=str(base_dir),
        base_layout=layout,
    )  # fmt: skip
    args = TrainingArguments(str(out.parent / "run"), use_cpu=True, report_to=[])
    trainer = FunAsrNanoTrainer(model=model, args=args, processor=processor, card_info=info)
    trainer.save_model(str(out))
    processor.save_pretrained(str(out))
    return model.eval()


def _assert_same_outputs(trained, loaded, batch) -> None:
    with torch.no_grad():
        expected = trained(**batch).logits
        actual = loaded(**batch).logits
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)


def test_hf_base_loads_with_auto_peft_model_alone(tiny_original_dir, shared_dir, batch_and_data, tmp_path):
    batch, _ = batch_and_data
    model, processor = load_pretrained(tiny_original_dir)
    base = save_hf_folder(model, processor, tmp_path / "hf_base")
    trained = _trained_and_saved(base, "hf", tmp_path / "final")
    config = json.loads((tmp_path / "final" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(base.resolve())
    assert config["auto_mapping"] == {"base_model_class": "AutoModelForSpeechSeq2Seq", "parent_library": "transformers"}
    loaded = AutoPeftModel.from_pretrained(str(tmp_path / "final")).eval()
    assert isinstance(loaded.get_base_model(), funasr_nano_hf.FunAsrNanoHfForConditionalGeneration)
    _assert_same_outputs(trained, loaded, batch)
    processor = AutoProcessor.from_pretrained(str(tmp_path / "final"))  # the README's two lines, then transcribe
    assert isinstance(processor, funasr_nano_hf.FunAsrNanoHfProcessor)
    wav = sorted((Path(shared_dir) / "data" / "tts" / "wav" / "valid").glob("*.wav"))[:2]
    texts = funasr_nano_hf.transcribe(loaded, processor, [str(w) for w in wav], max_new_tokens=5)
    assert texts == funasr_nano_hf.transcribe(trained, processor, [str(w) for w in wav], max_new_tokens=5)
    card = ModelCard.load(tmp_path / "final" / "README.md")  # ours, not peft's blank template
    assert card.data.library_name == "peft" and card.data.pipeline_tag == "automatic-speech-recognition"
    assert card.data.base_model is None and str(base.resolve()) in card.text  # a local path is no Hub metadata


def test_original_funasr_base_loads_with_the_import_allowlist(tiny_original_dir, batch_and_data, tmp_path):
    batch, _ = batch_and_data
    trained = _trained_and_saved(tiny_original_dir, "original", tmp_path / "final")
    config = json.loads((tmp_path / "final" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(Path(tiny_original_dir).resolve())
    assert config["auto_mapping"]["parent_library"] == "funasr_nano_hf"
    with pytest.raises(ValueError, match="import_allowlist"):  # peft's own guard, named in its message
        AutoPeftModel.from_pretrained(str(tmp_path / "final"))
    loaded = AutoPeftModel.from_pretrained(str(tmp_path / "final"), import_allowlist=["funasr_nano_hf"]).eval()
    _assert_same_outputs(trained, loaded, batch)


def test_our_class_reads_an_original_folder_and_refuses_options_it_cannot_honour(tiny_original_dir, batch_and_data):
    batch, _ = batch_and_data
    reference, _ = load_pretrained(tiny_original_dir)
    model = funasr_nano_hf.FunAsrNanoHfForConditionalGeneration.from_pretrained(str(tiny_original_dir))
    _assert_same_outputs(reference.eval(), model.eval(), batch)
    with pytest.raises(ValueError, match="original FunASR folder.*convert-model"):
        funasr_nano_hf.FunAsrNanoHfForConditionalGeneration.from_pretrained(
            str(tiny_original_dir), attn_implementation="eager"
        )
