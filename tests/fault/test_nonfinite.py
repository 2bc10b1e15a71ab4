"""A real bad example -- a float WAV whose amplitude (1e20) turns the fbank features into NaN -- in a real
fine-tuning run: the non-finite loss is caught at its step and named with the batch's example keys;
``--on_nonfinite skip`` trains on without an update from that batch (counted, in train.log), the default
``stop`` ends the run with that message. Also the gradient check, on a module with an inf gradient."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import soundfile as sf
import torch
from finetune_runs import LAST_STEP, finetune_cmd, run, weights

from funasr_nano_hf.errors import NonFiniteLossError
from funasr_nano_hf.training.nonfinite import NonFiniteGuard

pytestmark = pytest.mark.slow

LOUD = "loud_0002"
SKIPPED = re.compile(rf"non-finite loss \(nan\) at step (\d+) on the examples \[[^]]*'{LOUD}'[^]]*\]: batch skipped")


@pytest.fixture(scope="module")
def loud_data(fault_data, tmp_path_factory):
    """The 8 training examples with the third one's audio replaced by the same clip at amplitude 1e20."""
    folder = tmp_path_factory.mktemp("loud_data")
    rows = [json.loads(line) for line in (fault_data / "train.jsonl").read_text().splitlines()]
    audio, rate = sf.read(str(fault_data / rows[2]["wav"]), dtype="float32")
    sf.write(str(folder / "loud.wav"), audio / np.abs(audio).max() * 1e20, rate, subtype="FLOAT")
    rows[2].update(key=LOUD, wav=str(folder / "loud.wav"))
    for row in rows:
        row["wav"] = str((fault_data / row["wav"]).resolve())  # absolute: the manifest moved
    (folder / "train.jsonl").write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    return folder


def test_skip_counts_names_and_does_not_update(tiny_original_dir, loud_data, tmp_path):
    out = tmp_path / "skip"
    # keep every checkpoint (without validation data the n-best keep the newest 2 of this recipe)
    run(finetune_cmd(tiny_original_dir, loud_data, out, "--on_nonfinite", "skip", "--keep_nbest_models", "0"))
    log = (out / "train.log").read_text()
    steps = [int(step) for step in SKIPPED.findall(log)]
    assert len(steps) == 2 and steps[0] <= 2 < steps[1], log  # the loud example's batch, once per epoch
    assert re.search(r"\| step 4 \| .*\| nonfinite_skipped_batches 2$", log, re.M), log
    assert json.loads((out / "all_results.json").read_text())["train_nonfinite_skipped_batches"] == 2
    # no optimizer update from a skipped batch: its checkpoint holds the previous step's weights
    before, after = weights(out / f"checkpoint-{steps[1] - 1}"), weights(out / f"checkpoint-{steps[1]}")
    assert all(torch.equal(before[k], after[k]) for k in before)
    other = 3 if steps[1] == 4 else 4  # ... while the other steps of the epoch do update
    assert not all(
        torch.equal(a, b)
        for a, b in zip(
            weights(out / f"checkpoint-{other - 1}").values(), weights(out / f"checkpoint-{other}").values()
        )
    )
    final = weights(out / "final")
    assert all(torch.isfinite(t).all() for t in final.values())


def test_stop_is_the_default_and_names_the_step_and_keys(tiny_original_dir, loud_data, tmp_path):
    out = tmp_path / "stop"
    output = run(finetune_cmd(tiny_original_dir, loud_data, out), returncode=1)
    match = re.search(
        rf"NonFiniteLossError: non-finite loss \(nan\) at step (\d+) on the examples "
        rf"\[[^]]*'{LOUD}'[^]]*\]; training stopped \(--on_nonfinite stop\)",
        output,
    )
    assert match, output[-3000:]
    step = int(match.group(1))
    assert step < LAST_STEP and not (out / f"checkpoint-{step}").exists()
    assert "training stopped (--on_nonfinite stop)" in (out / "train.log").read_text()


class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.good, self.bad = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)


def _poisoned() -> _Net:
    net = _Net()
    for param in net.parameters():
        param.grad = torch.ones_like(param)
    net.bad.weight.grad[0, 0] = float("inf")
    return net


def test_nonfinite_gradient_stops_or_drops_the_step():
    with pytest.raises(
        NonFiniteLossError,
        match=r"non-finite gradient in bad\.weight at step 7 on the examples "
        r"\['a', 'b'\]; training stopped",
    ):
        guard = NonFiniteGuard("stop")
        guard.record_loss(torch.tensor(1.0), 7, ["a", "b"])
        guard.check_step(_poisoned(), 7)
    guard, net = NonFiniteGuard("skip"), _poisoned()
    guard.record_loss(torch.tensor(1.0), 7, ["a"])
    guard.record_loss(torch.tensor(2.0), 7, ["b"])  # two micro-batches of one optimizer step
    assert guard.check_step(net, 7)
    assert all(param.grad is None for param in net.parameters())  # no optimizer update from this step
    assert [(b.step, b.keys) for b in guard.skipped] == [(7, ("a", "b"))]
    assert "skipped 1 batch(es)" in guard.summary() and "['a', 'b']" in guard.summary()
    healthy = _Net()
    for param in healthy.parameters():
        param.grad = torch.ones_like(param)
    assert not NonFiniteGuard("stop").check_step(healthy, 8)  # finite: nothing happens
    assert all(param.grad is not None for param in healthy.parameters())


def test_scaler_overflow_is_not_a_fault_but_a_nonfinite_loss_is():
    """With a GradScaler, non-finite gradients from finite losses are its overflow (it skips the step and lowers
    its scale): no fault, the gradients are left to it. A non-finite loss is a fault with or without a scaler,
    named with the keys of its micro-batch only."""
    guard, net = NonFiniteGuard("stop", grad_scaler=True), _poisoned()
    guard.record_loss(torch.tensor(1.0), 3, ["a"])
    assert not guard.check_step(net, 3, grad_norm=torch.tensor(float("inf")))
    assert all(param.grad is not None for param in net.parameters())
    guard = NonFiniteGuard("skip", grad_scaler=True)
    guard.record_loss(torch.tensor(1.0), 4, ["a"])
    guard.record_loss(torch.tensor(float("nan")), 4, ["b"])
    assert guard.check_step(_poisoned(), 4, grad_norm=torch.tensor(float("nan")))
    assert [(b.step, b.reason, b.keys) for b in guard.skipped] == [(4, "non-finite loss (nan)", ("b",))]


@pytest.mark.parametrize("policy", ["stop", "skip"])
def test_trainer_checks_gradients_after_backward(tiny_original_dir, fault_data, tmp_path, policy):
    """Finite loss, inf gradient (a tensor hook on one LoRA weight): the trainer's step finds it after
    backward; stop names the parameter, step and keys; skip leaves the weights untouched."""
    from transformers import TrainingArguments

    from funasr_nano_hf import load_pretrained
    from funasr_nano_hf.data.collator import FunAsrNanoCollator
    from funasr_nano_hf.data.featurize import DataConfig, build_dataset
    from funasr_nano_hf.training.arguments import ModelArguments
    from funasr_nano_hf.training.model_setup import prepare_model_for_finetuning
    from funasr_nano_hf.training.trainer import FunAsrNanoTrainer

    model, processor = load_pretrained(tiny_original_dir)
    model = prepare_model_for_finetuning(model, ModelArguments(model_dir=str(tiny_original_dir)))
    name, poisoned = next((n, p) for n, p in model.named_parameters() if p.requires_grad)
    poisoned.register_hook(lambda grad: torch.full_like(grad, float("inf")))
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    train_set, _ = build_dataset([str(fault_data / "train.jsonl")], processor, DataConfig())
    one_step = dict(max_steps=1, per_device_train_batch_size=4, use_cpu=True, report_to=[], disable_tqdm=True)
    args = TrainingArguments(str(tmp_path), remove_unused_columns=False, save_strategy="no", **one_step)
    collator = FunAsrNanoCollator(pad_token_id=processor.tokenizer.pad_token_id)
    trainer = FunAsrNanoTrainer(
        model, args, collator, train_set, processor=processor, on_nonfinite=policy, scheduler="hf"
    )
    if policy == "stop":
        with pytest.raises(
            NonFiniteLossError,
            match=rf"non-finite gradient in {re.escape(name)} at step 1 on the "
            r"examples \['tts_train_",
        ):
            trainer.train()
        return
    trainer.train()
    assert [batch.step for batch in trainer.nonfinite.skipped] == [1]
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters() if p.requires_grad)


def test_skip_with_deepspeed_is_refused():
    with pytest.raises(ValueError, match="not supported with DeepSpeed"):
        NonFiniteGuard("skip", deepspeed=True)
