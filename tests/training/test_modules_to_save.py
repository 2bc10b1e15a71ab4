"""LoRA together with a trained module (adaptor, encoder or LLM): the module's training is saved with the adapter
and restored by peft alone; a trained parameter missing from what was saved is an error, never a silent loss."""

from __future__ import annotations

import pytest
import torch
from transformers import TrainingArguments

from funasr_nano_hf import load_pretrained
from funasr_nano_hf.data.collator import FunAsrNanoCollator
from funasr_nano_hf.data.featurize import DataConfig, build_dataset
from funasr_nano_hf.errors import CheckpointError
from funasr_nano_hf.training import model_setup
from funasr_nano_hf.training.arguments import ModelArguments
from funasr_nano_hf.training.trainer import FunAsrNanoTrainer

UNFROZEN = {
    "adaptor": ("freeze_audio_adaptor", "model.multi_modal_projector."),
    "encoder": ("freeze_audio_encoder", "model.audio_tower."),
    "llm": ("freeze_llm", "model.language_model."),
}


def _train(model_dir, shared_dir, out, cache, **model_options) -> tuple[FunAsrNanoTrainer, dict]:
    """Three real optimizer steps (lr 1e-2) with LoRA and `model_options`; returns the trainer and a batch."""
    model, processor = load_pretrained(model_dir)
    args = ModelArguments(model_dir=str(model_dir), lora_dropout=0.0, **model_options)
    model = model_setup.prepare_model_for_finetuning(model, args)
    dataset, _ = build_dataset(
        [str(shared_dir / "data" / "tts" / "valid.jsonl")], processor, DataConfig(cache_dir=cache)
    )
    dataset = dataset.select(range(12))
    options = dict(max_steps=3, learning_rate=1e-2, warmup_steps=0, use_cpu=True, report_to=[], disable_tqdm=True)
    training_args = TrainingArguments(str(out), per_device_train_batch_size=4, save_strategy="no", **options)
    collator = FunAsrNanoCollator(pad_token_id=processor.tokenizer.pad_token_id)
    training_args.remove_unused_columns = False
    trainer = FunAsrNanoTrainer(model, training_args, collator, dataset, processor=processor, scheduler="hf")
    trainer.train()
    return trainer, collator(list(dataset.select(range(4))))


@pytest.mark.parametrize("part", sorted(UNFROZEN))
def test_reloaded_adapter_reproduces_the_trained_model(part, tiny_original_dir, shared_dir, tmp_path):
    from peft import PeftModel

    option, prefix = UNFROZEN[part]
    trainer, batch = _train(tiny_original_dir, shared_dir, tmp_path / "run", str(tmp_path / "c"), **{option: False})
    final = tmp_path / "final"
    trainer.save_model(str(final))
    trained = trainer.model.eval()
    base, _ = load_pretrained(tiny_original_dir)
    reloaded = PeftModel.from_pretrained(base, str(final)).eval()
    # the module really trained: it differs from the base checkpoint's, and the reload carries the trained values
    fresh, _ = load_pretrained(tiny_original_dir)
    fresh_state = fresh.state_dict()
    merged = reloaded.merge_and_unload().state_dict()
    changed = [k for k in fresh_state if k.startswith(prefix) and not torch.equal(fresh_state[k], merged[k])]
    assert changed, f"no {prefix} tensor changed: the module did not train or was not restored"
    reloaded = PeftModel.from_pretrained(load_pretrained(tiny_original_dir)[0], str(final)).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).logits, trained(**batch).logits, rtol=0, atol=0)


def test_a_trained_parameter_missing_from_the_save_is_an_error(tiny_original_dir, shared_dir, tmp_path, monkeypatch):
    """modules_to_save switched off while the adaptor still trains (the bug this guards against): saving names the
    adaptor's parameters instead of writing an adapter without them."""
    monkeypatch.setattr(model_setup, "modules_to_save", lambda model, args: [])
    original = model_setup.prepare_model_for_finetuning

    def reopen_adaptor(model, args):
        model = original(model, args)
        model.base_model.model.model.multi_modal_projector.requires_grad_(True)
        return model

    monkeypatch.setattr(model_setup, "prepare_model_for_finetuning", reopen_adaptor)
    trainer, _ = _train(
        tiny_original_dir, shared_dir, tmp_path / "run", str(tmp_path / "c"), freeze_audio_adaptor=False
    )
    with pytest.raises(
        CheckpointError, match=r"trained parameter\(s\) are not in the saved weights.*multi_modal_projector"
    ):
        trainer.save_model(str(tmp_path / "final"))


@pytest.mark.parametrize("part, module", [("adaptor", "multi_modal_projector"), ("encoder", "audio_tower")])
def test_frozen_cache_still_refuses_a_trained_audio_path(tiny_original_dir, shared_dir, tmp_path, part, module):
    from funasr_nano_hf.training.frozen_cache import add_audio_embeddings

    model, processor = load_pretrained(tiny_original_dir)
    args = ModelArguments(model_dir="x", **{UNFROZEN[part][0]: False})
    model = model_setup.prepare_model_for_finetuning(model, args)
    dataset, _ = build_dataset(
        [str(shared_dir / "data" / "tts" / "valid.jsonl")], processor, DataConfig(cache_dir=str(tmp_path))
    )
    with pytest.raises(ValueError, match=rf"frozen audio path, but {module} trains \(--{UNFROZEN[part][0]} false\)"):
        add_audio_embeddings(dataset, model)
