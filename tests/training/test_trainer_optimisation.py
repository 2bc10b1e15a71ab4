"""`FunAsrNanoTrainer` optimises as FunASR's trainer: one decay for every trainable parameter, warmuplr unless
transformers' schedule is asked for. (Loss normalisation, clipping: tests/training/test_funasr_training_parity.py.)"""

from __future__ import annotations

import pytest
from transformers import TrainingArguments

from funasr_nano_hf import load_pretrained
from funasr_nano_hf.training.arguments import ModelArguments
from funasr_nano_hf.training.model_setup import prepare_model_for_finetuning
from funasr_nano_hf.training.schedulers import warmuplr_factor
from funasr_nano_hf.training.trainer import FunAsrNanoTrainer


@pytest.fixture(scope="module")
def lora_and_adaptor(tiny_original_dir):
    """LoRA plus the trained adaptor: biases and LayerNorms among the trainable parameters."""
    model, processor = load_pretrained(tiny_original_dir)
    args = ModelArguments(model_dir=str(tiny_original_dir), freeze_audio_adaptor=False)
    return prepare_model_for_finetuning(model, args), processor


def _trainer(model_and_processor, tmp_path, **options) -> FunAsrNanoTrainer:
    model, processor = model_and_processor
    scheduler = options.pop("scheduler", "warmuplr")
    args = TrainingArguments(
        str(tmp_path), use_cpu=True, report_to=[], learning_rate=1e-4, weight_decay=1e-4, **options
    )
    return FunAsrNanoTrainer(model=model, args=args, processor=processor, scheduler=scheduler)


def test_weight_decay_on_every_trainable_parameter(lora_and_adaptor, tmp_path):
    trainer = _trainer(lora_and_adaptor, tmp_path)
    optimizer = trainer.create_optimizer()
    trainable = {id(p): n for n, p in trainer.model.named_parameters() if p.requires_grad}
    decayed = {id(p) for group in optimizer.param_groups if group["weight_decay"] == 1e-4 for p in group["params"]}
    undecayed = [trainable[id(p)] for g in optimizer.param_groups if g["weight_decay"] == 0 for p in g["params"]]
    assert undecayed == [] and decayed == set(trainable)
    names = list(trainable.values())
    assert any(n.endswith(".bias") for n in names) and any("layernorm" in n for n in names)  # the case that differs


def test_warmuplr_by_default_and_transformers_schedule_on_request(lora_and_adaptor, tmp_path):
    trainer = _trainer(lora_and_adaptor, tmp_path / "a", warmup_steps=3, lr_scheduler_type="cosine")
    trainer.create_optimizer_and_scheduler(num_training_steps=10)
    lrs = []
    for _ in range(6):
        lrs.append(trainer.optimizer.param_groups[0]["lr"])
        trainer.optimizer.step()  # no gradients: nothing moves
        trainer.lr_scheduler.step()
    assert lrs == pytest.approx([1e-4 * warmuplr_factor(n, 3) for n in range(1, 7)])

    trainer = _trainer(lora_and_adaptor, tmp_path / "b", warmup_steps=3, lr_scheduler_type="cosine", scheduler="hf")
    trainer.create_optimizer_and_scheduler(num_training_steps=10)
    assert trainer.optimizer.param_groups[0]["lr"] == 0.0  # transformers' warm-up starts at 0
    for _ in range(10):
        trainer.optimizer.step()
        trainer.lr_scheduler.step()
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)  # cosine ends at 0


def test_unknown_scheduler_is_refused(lora_and_adaptor, tmp_path):
    with pytest.raises(ValueError, match=r"scheduler must be one of \['warmuplr', 'hf'\], got 'linear'"):
        _trainer(lora_and_adaptor, tmp_path, scheduler="linear")


def test_no_warmup_is_refused_when_training_starts(lora_and_adaptor, tmp_path):
    trainer = _trainer(lora_and_adaptor, tmp_path, warmup_steps=0)
    trainer.create_optimizer()
    with pytest.raises(ValueError, match="--warmup_steps 0"):
        trainer.create_scheduler(num_training_steps=10)
