"""The private transformers / accelerate internals `FunAsrNanoTrainer` relies on (each behind one named helper in
training/trainer.py, checked against transformers 5.23.0 and accelerate 1.15.0) are still there, with the
parameters we call them with and the behaviour we depend on. Fast: no model, no training. When one of these
fails after an upgrade, re-check the matching helper before touching the test."""

from __future__ import annotations

import inspect
import re

import pytest
import transformers
from torch.utils.data import DataLoader
from transformers import Trainer, trainer_utils

from funasr_nano_hf.data.samplers import build_batch_sampler
from funasr_nano_hf.training import trainer as trainer_module
from funasr_nano_hf.training.trainer import FunAsrNanoTrainer


def _parameters(function) -> list[str]:
    return list(inspect.signature(function).parameters)


def _source(function) -> str:
    return inspect.getsource(function)


# ---- transformers.Trainer: the private hooks we override and call ------------------------------------------
def test_private_trainer_methods_keep_their_signatures():
    assert _parameters(Trainer._get_output_dir) == ["self", "trial"]
    assert _parameters(Trainer._save_checkpoint) == ["self", "model", "trial"]
    assert _parameters(Trainer._push_from_checkpoint) == ["self", "checkpoint_folder"]
    assert _parameters(Trainer._load_from_checkpoint)[:2] == ["self", "resume_from_checkpoint"]
    # our overrides accept what the Trainer passes them
    assert _parameters(FunAsrNanoTrainer._get_output_dir) == _parameters(Trainer._get_output_dir)
    assert _parameters(FunAsrNanoTrainer._save_checkpoint) == _parameters(Trainer._save_checkpoint)
    # the non-finite check runs once per optimizer step, in the hook that computes the (unscaled) gradient norm
    assert _parameters(Trainer._get_grad_norm) == _parameters(FunAsrNanoTrainer._get_grad_norm)
    assert re.search(
        r"self\._get_grad_norm\(model, grad_norm=grad_norm\)\s+.*\s+self\.optimizer\.step\(\)",
        _source(Trainer._run_epoch),
        re.S,
    )


def test_trainer_saves_through_the_hooks_we_override():
    """The staging redirect works only if `_save_checkpoint` asks `_get_output_dir` where to write, pushes
    only when ``args.push_to_hub`` (we turn it off while staging and push the published folder), and the
    Trainer's save step calls `_save_checkpoint`."""
    save = _source(Trainer._save_checkpoint)
    assert re.search(r"self\._get_output_dir\(\s*trial=trial\s*\)", save)
    assert re.search(r"if self\.args\.push_to_hub:\s*self\._push_from_checkpoint\(", save)
    assert "rotate_checkpoints(" in save
    assert re.search(r"self\._save_checkpoint\(\s*model\s*,\s*trial\s*\)", _source(transformers.trainer))


def test_rotate_checkpoints_keeps_its_keywords():
    parameters = _parameters(trainer_utils.rotate_checkpoints)
    assert parameters[:4] == ["output_dir", "save_total_limit", "best_model_checkpoint", "use_mtime"]
    assert trainer_utils.PREFIX_CHECKPOINT_DIR == "checkpoint"


@pytest.mark.parametrize(
    "name, parameters",
    [
        ("training_step", ["self", "model", "inputs", "num_items_in_batch"]),
        ("compute_loss", ["self", "model", "inputs", "return_outputs", "num_items_in_batch"]),
        (
            "evaluation_loop",
            ["self", "dataloader", "description", "prediction_loss_only", "ignore_keys", "metric_key_prefix"],
        ),
        ("prediction_step", ["self", "model", "inputs", "prediction_loss_only", "ignore_keys"]),
    ],
)
def test_public_hooks_we_override_keep_their_parameters(name, parameters):
    """We call these on `super()` positionally: the order matters."""
    assert _parameters(getattr(Trainer, name)) == parameters
    assert _parameters(getattr(FunAsrNanoTrainer, name)) == parameters


def test_helpers_name_the_checked_versions():
    for helper in (
        trainer_module._trainer_run_dir,
        trainer_module._write_trainer_checkpoint,
        trainer_module._push_checkpoint,
        trainer_module._rotate_checkpoints,
        trainer_module._load_model_weights,
    ):
        assert "transformers 5.23.0" in helper.__doc__
    assert "accelerate 1.15.0" in trainer_module._undo_accelerate_sharding.__doc__


# ---- accelerate: the batch-sampler wrapper of a prepared DataLoader ----------------------------------------
def test_prepared_loader_shard_fields_and_undoing_them():
    """With several processes accelerate wraps our (already rank-sharded) batch sampler in a
    ``BatchSamplerShard`` exposing ``batch_sampler``, ``num_processes`` and ``process_index``; after
    `_undo_accelerate_sharding` the prepared loader yields every batch of our sampler, in order."""
    from accelerate.data_loader import BatchSamplerShard, prepare_data_loader

    sampler = build_batch_sampler("example", [10] * 12, batch_size=2, seed=0, num_replicas=1, rank=0)
    ours = [list(batch) for batch in sampler]
    loader = prepare_data_loader(DataLoader(list(range(12)), batch_sampler=sampler), num_processes=2, process_index=1)
    shard = loader.batch_sampler
    assert isinstance(shard, BatchSamplerShard)
    assert shard.batch_sampler is sampler and (shard.num_processes, shard.process_index) == (2, 1)
    assert len(list(loader)) == len(ours) // 2  # accelerate's own sharding: every other batch

    trainer_module._undo_accelerate_sharding(loader, sampler)
    assert (shard.num_processes, shard.process_index) == (1, 0)
    assert [batch.tolist() for batch in loader] == ours


def test_one_process_loader_is_left_alone():
    from accelerate.data_loader import prepare_data_loader

    sampler = build_batch_sampler("example", [10] * 6, batch_size=2, seed=0, num_replicas=1, rank=0)
    loader = prepare_data_loader(DataLoader(list(range(6)), batch_sampler=sampler), num_processes=1, process_index=0)
    trainer_module._undo_accelerate_sharding(loader, sampler)  # nothing wrapped: nothing to undo
    assert [batch.tolist() for batch in loader] == [list(batch) for batch in sampler]


# ---- the optimisation hooks (FunASR's optimizer / scheduler / loss normalisation) ---------------------------
def test_optimisation_hooks_we_override_and_the_flags_we_set():
    """`create_scheduler` and `get_decay_parameter_names` keep their parameters; `_mark_scheduler_created` sets the
    flag `_prepare_for_training` reads to rebuild the scheduler on a later ``train()``; ``model_accepts_loss_kwargs``
    still decides both whether ``num_items_in_batch`` reaches the model and whether the loss is divided by the
    accumulation steps."""
    assert _parameters(Trainer.create_scheduler) == ["self", "num_training_steps", "optimizer"]
    assert _parameters(FunAsrNanoTrainer.create_scheduler) == _parameters(Trainer.create_scheduler)
    assert _parameters(Trainer.get_decay_parameter_names) == ["self", "model"]
    assert "self._created_lr_scheduler = True" in _source(Trainer.create_scheduler)
    assert re.search(
        r"if self\._created_lr_scheduler:\s*self\.lr_scheduler = None", _source(Trainer._prepare_for_training)
    )
    assert "transformers 5.23.0" in trainer_module._mark_scheduler_created.__doc__
    assert re.search(r"if self\.model_accepts_loss_kwargs:", _source(Trainer.compute_loss))
    step = _source(Trainer.training_step)
    assert "self.model_accepts_loss_kwargs and num_items_in_batch is not None" in step
    assert "loss = loss / self.current_gradient_accumulation_steps" in step
