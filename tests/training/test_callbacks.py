"""Training callbacks with a REAL `Trainer` on a tiny regression model: train.log (`TrainLog` for a whole run,
errors with tracebacks), curves.png, n-best pruning by a metric (also across a resume) or by recency (no
validation), fp32 checkpoint averaging (full model and peft adapter), epoch-end validation and saving, early
stopping counted in epochs (also across a resume), FunASR's validation accuracy."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import Dataset
from transformers import Trainer, TrainerCallback, TrainingArguments

from funasr_nano_hf.training.averaging import average_checkpoints
from funasr_nano_hf.training.callbacks import (
    NBEST_METRICS,
    CurvePlotCallback,
    EpochEarlyStoppingCallback,
    EpochEndValidationCallback,
    FileLoggerCallback,
    NBestCheckpointCallback,
    TrainLog,
)
from funasr_nano_hf.training.checkpointing import COMPLETE_MARKER

STEPS = 40
EVERY = 5  # eval_steps == save_steps
KEEP, AVG = 3, 2
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
METRIC_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \| step (\d+) \|")


# ------------------------------------------------------------------------------------------------------
# tiny model, data, metric
# ------------------------------------------------------------------------------------------------------
class TinyRegressor(nn.Module):
    """y = w.x + b with an integer buffer (like BatchNorm's num_batches_tracked) that must not be averaged."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 1)
        self.register_buffer("num_batches_tracked", torch.zeros((), dtype=torch.long))

    def forward(self, x, labels=None):
        prediction = self.linear(x).squeeze(-1)
        if self.training:
            self.num_batches_tracked += 1
        output = {"logits": prediction}
        if labels is not None:
            output = {"loss": nn.functional.mse_loss(prediction, labels), **output}
        return output


class RegressionData(Dataset):
    def __init__(self, n: int, seed: int):
        generator = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 4, generator=generator)
        self.y = self.x @ torch.tensor([1.0, -2.0, 3.0, 0.5]) + 0.1 * torch.randn(n, generator=generator)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[i], "labels": self.y[i]}


def compute_metrics(prediction) -> dict[str, float]:
    """A fake but deterministic 'cer' from the predictions: not monotonic in training progress, so the
    n best are scattered over the run (`mae` decreases, used as the Trainer's own best metric)."""
    predictions = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
    mae = float(np.abs(predictions - prediction.label_ids).mean())
    return {"cer": (mae * 1e4) % 1.0, "mae": mae}


class EmitWarnings(TrainerCallback):
    """Warnings from both logger hierarchies during training: they must land in train.log."""

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 3:
            logging.getLogger("funasr_nano_hf.tests").warning("marker-from-funasr-nano-hf")
            transformers.utils.logging.get_logger("transformers.trainer").warning("marker-from-transformers")


def training_args(output_dir: Path, max_steps: int, **overrides) -> TrainingArguments:
    options = dict(
        output_dir=str(output_dir),
        max_steps=max_steps,
        per_device_train_batch_size=8,
        per_device_eval_batch_size=32,
        learning_rate=0.05,
        lr_scheduler_type="constant",
        eval_strategy="steps",
        save_strategy="steps",
        eval_steps=EVERY,
        save_steps=EVERY,
        logging_steps=2,
        save_total_limit=None,
        # The Trainer's own "best" is by mae (the earliest checkpoint), deliberately not the callback's cer:
        # the callback must keep it although it is not among the n best by cer.
        load_best_model_at_end=True,
        metric_for_best_model="mae",
        greater_is_better=True,
        label_names=["labels"],
        use_cpu=True,
        report_to=[],
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=0,
    )
    options.update(overrides)
    return TrainingArguments(**options)


def checkpoint_steps(output_dir: Path) -> set[int]:
    return {int(p.name.split("-")[1]) for p in output_dir.glob("checkpoint-*") if p.is_dir()}


def cer_by_step(log_history: list[dict]) -> dict[int, float]:
    scores: dict[int, float] = {}
    for entry in log_history:
        if "eval_cer" in entry:
            scores.setdefault(entry["step"], entry["eval_cer"])
    return scores


def ranked_steps(scores: dict[int, float]) -> list[int]:
    return sorted(scores, key=lambda step: (scores[step], step))


def fp32_mean(files: list[Path]) -> dict[str, torch.Tensor]:
    """Independent reference: float tensors averaged in float64 -> stored dtype; integers from the first."""
    loaded = [load_file(str(f)) for f in files]
    expected = {}
    for key, first in loaded[0].items():
        if first.is_floating_point():
            stacked = torch.stack([state[key].to(torch.float64) for state in loaded])
            expected[key] = stacked.mean(0).to(first.dtype)
        else:
            expected[key] = first
    return expected


# ------------------------------------------------------------------------------------------------------
# one real training run shared by the tests below
# ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("run")
    torch.manual_seed(0)
    nbest = NBestCheckpointCallback(keep_nbest_models=KEEP, avg_nbest_model=AVG, metric="eval_cer")
    trainer = Trainer(
        model=TinyRegressor(),
        args=training_args(output_dir, STEPS),
        train_dataset=RegressionData(256, seed=1),
        eval_dataset=RegressionData(64, seed=2),
        compute_metrics=compute_metrics,
        callbacks=[FileLoggerCallback(), CurvePlotCallback(), nbest, EmitWarnings()],
    )
    trainer.train()
    return trainer, output_dir, nbest


def test_train_log_has_one_line_per_log_event(trained):
    trainer, output_dir, _ = trained
    text = (output_dir / "train.log").read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if METRIC_LINE.match(line)]
    history = trainer.state.log_history
    assert len(lines) == len(history) == STEPS // 2 + STEPS // EVERY + 1
    for line, entry in zip(lines, history):
        assert int(METRIC_LINE.match(line).group(1)) == entry["step"]
        for key in ("loss", "eval_loss", "eval_cer", "train_loss"):
            if key in entry:
                assert f"| {key} {entry[key]:.6g}" in line
    assert sum("| loss " in line for line in lines) == STEPS // 2
    # warnings of both logger hierarchies, emitted during training, are in the file
    assert re.search(r"\| WARNING \| funasr_nano_hf\.tests \| marker-from-funasr-nano-hf$", text, re.M)
    assert re.search(r"\| WARNING \| transformers\.trainer \| marker-from-transformers$", text, re.M)
    # the handler is gone after training: no leak into later runs
    log_file = str((output_dir / "train.log").resolve())
    for name in ("transformers", "funasr_nano_hf"):
        assert not [h for h in logging.getLogger(name).handlers if getattr(h, "baseFilename", None) == log_file]


def test_file_logger_appends_after_training(trained):
    trainer, output_dir, _ = trained
    before = (output_dir / "train.log").read_text(encoding="utf-8").count("\n")
    trainer.evaluate()  # a log event after on_train_end: appended without a handler
    after = (output_dir / "train.log").read_text(encoding="utf-8").splitlines()
    assert len(after) == before + 1 and METRIC_LINE.match(after[-1]) and "| eval_cer " in after[-1]


def test_curves_png(trained):
    _, output_dir, _ = trained
    png = output_dir / "curves.png"
    data = png.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 1024
    import matplotlib.image

    height, width = matplotlib.image.imread(str(png)).shape[:2]
    assert (width, height) == (800, 640)  # two panels: losses and CER
    assert not list(output_dir.glob(".curves*"))  # no temp file left behind


def test_curve_plot_without_cer(tmp_path):
    history = [{"loss": 1.0, "step": 1}, {"loss": 0.5, "step": 2}, {"eval_loss": 0.7, "step": 2}]
    path = CurvePlotCallback().plot(history, tmp_path / "c.png")
    assert path.read_bytes()[:8] == PNG_MAGIC
    import matplotlib.image

    assert matplotlib.image.imread(str(path)).shape[:2] == (320, 800)  # one panel
    assert CurvePlotCallback().plot([{"step": 1, "learning_rate": 0.1}], tmp_path / "none.png") is None


def test_only_nbest_newest_and_trainer_best_remain(trained):
    trainer, output_dir, _ = trained
    scores = cer_by_step(trainer.state.log_history)
    assert sorted(scores) == list(range(EVERY, STEPS + 1, EVERY))
    assert len(set(scores.values())) == len(scores)  # the fake cer differs between checkpoints
    best_by_trainer = int(Path(trainer.state.best_model_checkpoint).name.split("-")[1])
    expected = set(ranked_steps(scores)[:KEEP]) | {STEPS, best_by_trainer}
    assert checkpoint_steps(output_dir) == expected
    assert len(expected) < len(scores)  # something was pruned

    summary = json.loads((output_dir / "nbest.json").read_text())
    assert summary["metric"] == "eval_cer"
    assert {entry["step"] for entry in summary["kept"]} == expected
    for entry in summary["kept"]:
        assert entry["metric"] == pytest.approx(scores[entry["step"]])
        assert Path(entry["path"]).is_dir()
    assert [entry["step"] for entry in summary["averaged"]] == ranked_steps(scores)[:AVG]


def test_average_is_fp32_mean_of_the_best(trained):
    trainer, output_dir, nbest = trained
    scores = cer_by_step(trainer.state.log_history)
    chosen = [output_dir / f"checkpoint-{step}" for step in ranked_steps(scores)[:AVG]]
    average_dir = output_dir / "model_avg"
    assert nbest.averaged_dir == average_dir
    averaged = load_file(str(average_dir / "model.safetensors"))
    expected = fp32_mean([c / "model.safetensors" for c in chosen])
    assert averaged.keys() == expected.keys()
    for key in expected:
        assert averaged[key].dtype == expected[key].dtype
        torch.testing.assert_close(averaged[key], expected[key], rtol=1e-6, atol=1e-7)
    # the integer buffer is the best checkpoint's, not a sum (FunASR's bug) nor a mean
    best_counter = load_file(str(chosen[0] / "model.safetensors"))["num_batches_tracked"]
    assert torch.equal(averaged["num_batches_tracked"], best_counter)
    # folder: the best checkpoint's files minus the training state; loadable
    names = {p.name for p in average_dir.iterdir()}
    assert "model.safetensors" in names
    assert not names & {"optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json", "scaler.pt"}
    assert COMPLETE_MARKER in {p.name for p in chosen[0].iterdir()}  # the plain Trainer's checkpoint, adopted
    assert COMPLETE_MARKER not in names  # the average is a model folder, not a checkpoint to resume
    assert {p.name for p in chosen[0].iterdir()} - names <= {
        "optimizer.pt",
        "scheduler.pt",
        "rng_state.pth",
        "trainer_state.json",
        "scaler.pt",
        COMPLETE_MARKER,
    }
    model = TinyRegressor()
    model.load_state_dict(averaged)
    assert not list(output_dir.glob(".model_avg*"))  # no temp folder left behind


# ------------------------------------------------------------------------------------------------------
# average_checkpoints on its own
# ------------------------------------------------------------------------------------------------------
def write_checkpoint(folder: Path, tensors: dict[str, torch.Tensor], name: str = "model.safetensors") -> Path:
    folder.mkdir(parents=True)
    save_file(tensors, str(folder / name), metadata={"format": "pt"})
    (folder / "config.json").write_text('{"model_type": "tiny"}')
    (folder / "optimizer.pt").write_bytes(b"not a model file")
    (folder / "trainer_state.json").write_text("{}")
    (folder / "rng_state.pth").write_bytes(b"rng")
    return folder


def test_average_accumulates_low_precision_in_fp32(tmp_path):
    # bf16 has 8 significant bits: 256 + 1 rounds back to 256, so a bf16 running sum of (256, 1, 1) is 256
    # and its mean 85.5 (the bf16 nearest 85.33); the fp32 mean is exactly 86.
    bf16 = [torch.tensor([256.0, 1.0]), torch.tensor([1.0, 1.0]), torch.tensor([1.0, 1.0])]
    # fp16 overflows: 60000 + 60000 = inf in fp16; the fp32 mean is 60000.
    fp16 = [torch.tensor([60000.0]), torch.tensor([60000.0]), torch.tensor([60000.0])]
    counts = [torch.tensor([10]), torch.tensor([20]), torch.tensor([30])]
    folders = [
        write_checkpoint(
            tmp_path / f"checkpoint-{i}",
            {
                "w_bf16": b.to(torch.bfloat16),
                "w_fp16": h.to(torch.float16),
                "steps": c,
                "mask": torch.tensor([True, i == 0]),
            },
        )
        for i, (b, h, c) in enumerate(zip(bf16, fp16, counts))
    ]
    naive_bf16 = (bf16[0].bfloat16() + bf16[1].bfloat16() + bf16[2].bfloat16()) / 3
    naive_fp16 = (fp16[0].half() + fp16[1].half() + fp16[2].half()) / 3
    assert naive_bf16[0].item() == 85.5 and torch.isinf(naive_fp16).all()  # what bf16/fp16 sums would give

    out = average_checkpoints(folders, tmp_path / "avg")
    averaged = load_file(str(out / "model.safetensors"))
    assert averaged["w_bf16"].dtype == torch.bfloat16 and averaged["w_fp16"].dtype == torch.float16
    assert averaged["w_bf16"].tolist() == [86.0, 1.0]
    assert averaged["w_fp16"].tolist() == [60000.0]
    assert averaged["steps"].tolist() == [10]  # integers: the first (best) checkpoint's
    assert averaged["mask"].tolist() == [True, True]
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]

    # rewriting replaces the folder as a whole and leaves no temp/old folders behind
    (out / "stale.txt").write_text("from an earlier average")
    average_checkpoints(folders[1:], out)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    assert load_file(str(out / "model.safetensors"))["steps"].tolist() == [20]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["avg", "checkpoint-0", "checkpoint-1", "checkpoint-2"]


def test_average_rejects_mismatched_checkpoints(tmp_path):
    a = write_checkpoint(tmp_path / "a", {"w": torch.ones(2)})
    b = write_checkpoint(tmp_path / "b", {"v": torch.ones(2)})
    c = write_checkpoint(tmp_path / "c", {"w": torch.ones(3)})
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="tensor names"):
        average_checkpoints([a, b], tmp_path / "out")
    with pytest.raises(ValueError, match="shape"):
        average_checkpoints([a, c], tmp_path / "out")
    with pytest.raises(FileNotFoundError):
        average_checkpoints([empty], tmp_path / "out")
    with pytest.raises(ValueError):
        average_checkpoints([a], a)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(4, 8)
        self.head = nn.Linear(8, 1)

    def forward(self, x, labels=None):
        prediction = self.head(torch.tanh(self.proj(x))).squeeze(-1)
        output = {"logits": prediction}
        if labels is not None:
            output = {"loss": nn.functional.mse_loss(prediction, labels), **output}
        return output


def test_average_peft_adapter_folders(tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model

    folders = []
    for i in range(3):
        torch.manual_seed(i)
        config = LoraConfig(r=2, lora_alpha=4, target_modules=["proj"], init_lora_weights=False)
        model = get_peft_model(TinyNet(), config)
        model.save_pretrained(str(tmp_path / f"checkpoint-{i}"))
        (tmp_path / f"checkpoint-{i}" / "optimizer.pt").write_bytes(b"x")
        folders.append(tmp_path / f"checkpoint-{i}")
    out = average_checkpoints(folders, tmp_path / "adapter_avg")
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    expected = fp32_mean([f / "adapter_model.safetensors" for f in folders])
    averaged = load_file(str(out / "adapter_model.safetensors"))
    assert averaged.keys() == expected.keys() and any("lora_A" in k for k in expected)
    for key in expected:
        torch.testing.assert_close(averaged[key], expected[key], rtol=1e-6, atol=1e-7)
    # loads as an adapter
    loaded = PeftModel.from_pretrained(TinyNet(), str(out))
    state = {k: v for k, v in loaded.state_dict().items() if "lora_A" in k}
    assert state and all(torch.allclose(v, averaged[k.replace(".default", "")]) for k, v in state.items())


# ------------------------------------------------------------------------------------------------------
# peft + resume: scores of the first session come back from the restored log_history
# ------------------------------------------------------------------------------------------------------
def test_nbest_with_peft_and_resume(tmp_path):
    from peft import LoraConfig, get_peft_model

    class RecordSteps(TrainerCallback):
        def __init__(self):
            self.steps: list[int] = []

        def on_step_end(self, args, state, control, **kwargs):
            self.steps.append(state.global_step)

    def make_trainer(max_steps: int) -> tuple[Trainer, NBestCheckpointCallback, RecordSteps]:
        torch.manual_seed(0)
        model = get_peft_model(TinyNet(), LoraConfig(r=2, lora_alpha=4, target_modules=["proj"]))
        # a fresh callback instance each session: no memory of the first one
        nbest, record = NBestCheckpointCallback(keep_nbest_models=2, avg_nbest_model=2), RecordSteps()
        trainer = Trainer(
            model=model,
            args=training_args(tmp_path, max_steps, learning_rate=0.02),
            train_dataset=RegressionData(256, seed=3),
            eval_dataset=RegressionData(64, seed=4),
            compute_metrics=compute_metrics,
            callbacks=[nbest, record],
        )
        return trainer, nbest, record

    first, _, _ = make_trainer(20)
    first.train()
    first_scores = cer_by_step(first.state.log_history)
    assert len(checkpoint_steps(tmp_path)) < 4
    assert (tmp_path / "checkpoint-20" / "adapter_model.safetensors").is_file()
    trainer, nbest, record = make_trainer(STEPS)
    trainer.train(resume_from_checkpoint=True)
    assert record.steps[0] == 21  # really resumed
    assert min(nbest._scores) > 20  # the first session's scores can only come from the restored log_history

    scores = cer_by_step(trainer.state.log_history)
    assert sorted(scores) == list(range(EVERY, STEPS + 1, EVERY))
    assert all(scores[step] == first_scores[step] for step in first_scores)
    best_by_trainer = int(Path(trainer.state.best_model_checkpoint).name.split("-")[1])
    expected = set(ranked_steps(scores)[:2]) | {STEPS, best_by_trainer}
    assert checkpoint_steps(tmp_path) == expected and len(expected) < len(scores)

    chosen = [tmp_path / f"checkpoint-{s}" for s in ranked_steps(scores)[:2]]
    average_dir = tmp_path / "model_avg"
    assert (average_dir / "adapter_config.json").is_file() and not (average_dir / "model.safetensors").exists()
    averaged = load_file(str(average_dir / "adapter_model.safetensors"))
    expected = fp32_mean([c / "adapter_model.safetensors" for c in chosen])
    for key in expected:
        torch.testing.assert_close(averaged[key], expected[key], rtol=1e-6, atol=1e-7)


def test_misspelt_metric_deletes_nothing(tmp_path, caplog):
    nbest = NBestCheckpointCallback(keep_nbest_models=1, avg_nbest_model=1, metric="wer")
    torch.manual_seed(0)
    trainer = Trainer(
        model=TinyRegressor(),
        args=training_args(tmp_path, 15, load_best_model_at_end=False, metric_for_best_model=None, logging_steps=5),
        train_dataset=RegressionData(64, seed=1),
        eval_dataset=RegressionData(16, seed=2),
        compute_metrics=compute_metrics,
        callbacks=[nbest],
    )
    with caplog.at_level(logging.WARNING, logger="funasr_nano_hf"):
        trainer.train()
    assert checkpoint_steps(tmp_path) == {5, 10, 15}
    assert "'eval_wer' is not among the evaluation metrics" in caplog.text
    assert not (tmp_path / "model_avg").exists()


# ------------------------------------------------------------------------------------------------------
# FunASR's epoch-end validation and early stopping counted in epochs
# ------------------------------------------------------------------------------------------------------
PER_EPOCH = 5  # 40 examples / batch 8


class StopAt(TrainerCallback):
    """Ends a session after `step` (as if killed right after that step's checkpoint)."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


def epoch_trainer(output_dir: Path, *callbacks, epochs: int = 3, **overrides) -> Trainer:
    torch.manual_seed(0)
    options = dict(num_train_epochs=epochs, max_steps=-1, eval_steps=3, save_steps=3, load_best_model_at_end=False)
    options.update(overrides)
    return Trainer(
        model=TinyRegressor(),
        args=training_args(output_dir, **options),
        train_dataset=RegressionData(8 * PER_EPOCH, seed=1),
        eval_dataset=RegressionData(16, seed=2),
        compute_metrics=compute_metrics,
        callbacks=list(callbacks),
    )


def eval_steps_of(trainer: Trainer) -> list[int]:
    return [entry["step"] for entry in trainer.state.log_history if "eval_loss" in entry]


def test_epoch_end_is_validated_and_saved_once(tmp_path):
    """eval/save every 3 steps, epochs of 5: the epoch ends 5 and 10 are validated and saved too; 15 is both an
    epoch end and a multiple of 3: once. Without the callback only the multiples of 3 (and the last step)."""
    trainer = epoch_trainer(tmp_path / "with", EpochEndValidationCallback())
    trainer.train()
    assert eval_steps_of(trainer) == [3, 5, 6, 9, 10, 12, 15]
    assert checkpoint_steps(tmp_path / "with") == {3, 5, 6, 9, 10, 12, 15}
    epochs = {
        s: json.loads((tmp_path / "with" / f"checkpoint-{s}" / "trainer_state.json").read_text())["epoch"]
        for s in (5, 10)
    }
    assert epochs == {5: 1.0, 10: 2.0}  # FunASR's model.pt.ep1, model.pt.ep2

    plain = epoch_trainer(tmp_path / "without")
    plain.train()
    assert eval_steps_of(plain) == [3, 6, 9, 12, 15]

    # eval_strategy "epoch" already evaluates at epoch ends: still once per step
    by_epoch = epoch_trainer(
        tmp_path / "epoch", EpochEndValidationCallback(), eval_strategy="epoch", save_strategy="epoch"
    )
    by_epoch.train()
    assert eval_steps_of(by_epoch) == [5, 10, 15]
    assert checkpoint_steps(tmp_path / "epoch") == {5, 10, 15}


def test_early_stopping_counts_epochs_not_evaluations(tmp_path):
    """learning rate 0: the validation loss never changes, so only epoch 1 improves (on nothing). Patience 2
    stops after epoch 3 (step 15 of 30) although the validations every 3 steps would have run out of patience
    at step 5 if they counted; the stopping epoch's checkpoint is written."""
    stopper = EpochEarlyStoppingCallback(early_stopping_patience=2)
    trainer = epoch_trainer(tmp_path, EpochEndValidationCallback(), stopper, epochs=6, learning_rate=0.0)
    trainer.train()
    assert trainer.state.global_step == 3 * PER_EPOCH
    assert [(h["epoch"], h["step"]) for h in stopper.history] == [(1, 5), (2, 10), (3, 15)]
    assert stopper.epochs_no_improve == 2 and stopper.best == pytest.approx(stopper.history[0]["value"])
    assert max(checkpoint_steps(tmp_path)) == 15
    saved = json.loads((tmp_path / "checkpoint-15" / "trainer_state.json").read_text())
    assert saved["stateful_callbacks"]["EpochEarlyStoppingCallback"]["attributes"]["epochs_no_improve"] == 2

    # patience 0: off (all 6 epochs), the values still tracked
    off = EpochEarlyStoppingCallback(early_stopping_patience=0)
    full = epoch_trainer(tmp_path / "off", EpochEndValidationCallback(), off, epochs=6, learning_rate=0.0)
    full.train()
    assert full.state.global_step == 6 * PER_EPOCH and off.epochs_no_improve == 5


def test_early_stopping_improvement_resets_the_count(tmp_path):
    """A strict improvement resets the count; equal or NaN values do not (FunASR's `<`)."""
    stopper = EpochEarlyStoppingCallback(early_stopping_patience=2)
    control = transformers.TrainerControl()
    state = transformers.TrainerState()
    stopper.on_train_begin(None, state, control)
    for epoch, value in enumerate([3.0, 2.0, 2.0, 1.5, float("nan"), 1.5], start=1):
        state.epoch, state.global_step = float(epoch), epoch * 10
        stopper.on_evaluate(None, state, control, metrics={"eval_loss": value})
    assert [h["value"] for h in stopper.history][:4] == [3.0, 2.0, 2.0, 1.5]
    assert stopper.history[4]["value"] is None  # NaN: not stored as a number
    assert stopper.best == 1.5 and stopper.epochs_no_improve == 2 and control.should_training_stop
    # evaluations inside an epoch (state.epoch not whole) are not counted
    inside = EpochEarlyStoppingCallback(early_stopping_patience=1)
    inside.on_train_begin(None, transformers.TrainerState(), control := transformers.TrainerControl())
    state = transformers.TrainerState(epoch=0.6, global_step=3)
    inside.on_evaluate(None, state, control, metrics={"eval_loss": 1.0})
    assert inside.history == [] and not control.should_training_stop


def test_early_stopping_count_survives_a_resume(tmp_path):
    """Killed after epoch 2 (count 1), resumed with a FRESH callback: the count comes back from the checkpoint and
    training stops after epoch 3. (FunASR restarts the count: it would stop after epoch 5.) Checkpoints every
    epoch, validations every 3 steps: the epoch end is validated before its checkpoint is written, so the
    checkpoint holds that epoch's count."""
    first = epoch_trainer(
        tmp_path,
        EpochEndValidationCallback(),
        EpochEarlyStoppingCallback(early_stopping_patience=2),
        StopAt(2 * PER_EPOCH),
        epochs=8,
        learning_rate=0.0,
        save_steps=PER_EPOCH,
    )
    first.train()
    assert first.state.global_step == 10
    stopper = EpochEarlyStoppingCallback(early_stopping_patience=2)
    resumed = epoch_trainer(
        tmp_path,
        EpochEndValidationCallback(),
        stopper,
        epochs=8,
        learning_rate=0.0,
        save_steps=PER_EPOCH,
    )
    resumed.train(resume_from_checkpoint=str(tmp_path / "checkpoint-10"))
    assert [h["epoch"] for h in stopper.history] == [1, 2, 3]
    assert resumed.state.global_step == 3 * PER_EPOCH


# ------------------------------------------------------------------------------------------------------
# n-best without validation data: the newest; ranking direction of "acc"
# ------------------------------------------------------------------------------------------------------
def test_nbest_without_validation_keeps_and_averages_the_newest(tmp_path):
    nbest = NBestCheckpointCallback(keep_nbest_models=2, avg_nbest_model=3, metric=None)
    torch.manual_seed(0)
    trainer = Trainer(
        model=TinyRegressor(),
        args=training_args(
            tmp_path, 12, eval_strategy="no", save_steps=2, load_best_model_at_end=False, metric_for_best_model=None
        ),
        train_dataset=RegressionData(128, seed=1),
        callbacks=[nbest],
    )
    trainer.train()
    assert checkpoint_steps(tmp_path) == {8, 10, 12}  # max(keep, avg): the average keeps its inputs
    summary = json.loads((tmp_path / "nbest.json").read_text())
    assert summary["ranked_by"] == "recency" and [e["step"] for e in summary["averaged"]] == [12, 10, 8]
    expected = fp32_mean([tmp_path / f"checkpoint-{s}" / "model.safetensors" for s in (12, 10, 8)])
    averaged = load_file(str(tmp_path / "model_avg" / "model.safetensors"))
    for key in expected:
        torch.testing.assert_close(averaged[key], expected[key], rtol=1e-6, atol=1e-7)


def test_nbest_higher_is_better_for_acc(trained, tmp_path):
    """FunASR's avg_keep_nbest_models_type: acc ranks the highest first, loss/cer the lowest."""
    assert NBEST_METRICS == {
        "cer": ("eval_cer", False),
        "wer": ("eval_wer", False),
        "mer": ("eval_mer", False),
        "acc": ("eval_acc", True),
        "loss": ("eval_loss", False),
    }
    trainer, _, _ = trained
    scores = cer_by_step(trainer.state.log_history)
    higher = NBestCheckpointCallback(metric="eval_cer", greater_is_better=True)._rank(scores)
    lower = NBestCheckpointCallback(metric="eval_cer", greater_is_better=False)._rank(scores)
    assert higher == sorted(scores, key=lambda step: (-scores[step], step)) and lower == ranked_steps(scores)


# ------------------------------------------------------------------------------------------------------
# train.log for the whole run
# ------------------------------------------------------------------------------------------------------
def test_train_log_covers_the_run_and_its_error(tmp_path, caplog, monkeypatch):
    """Records of every logger from the start (root, the package, transformers), the metric lines of a Trainer
    run through the same handler (no duplicate warnings), and an error with its traceback, re-raised."""
    path = tmp_path / "train.log"
    monkeypatch.setattr("sys.argv", ["finetune.py", "--hub_token", "hf_SECRET1", "--api-key=SECRET2", "--lr", "0.1"])
    with caplog.at_level(logging.INFO), pytest.raises(ValueError, match="bad manifest"):  # as finetune.py's basicConfig
        with TrainLog(path) as log:
            logging.getLogger("finetune").info("loading data")
            logging.getLogger("funasr_nano_hf.tests").warning("package-warning")
            transformers.utils.logging.get_logger("transformers.trainer").warning("transformers-warning")
            trainer = Trainer(
                model=TinyRegressor(),
                args=training_args(
                    tmp_path / "run",
                    4,
                    eval_strategy="no",
                    save_strategy="no",
                    load_best_model_at_end=False,
                    metric_for_best_model=None,
                ),
                train_dataset=RegressionData(64, seed=1),
                callbacks=[FileLoggerCallback(path), EmitWarnings()],
            )
            trainer.train()
            raise ValueError("bad manifest: line 3")
    text = path.read_text(encoding="utf-8")
    assert text.index("run started") < text.index("loading data") < text.index("| step 2 |")
    assert "run started: finetune.py --hub_token <redacted> --api-key=<redacted> --lr 0.1" in text
    assert "SECRET" not in text
    assert "| WARNING | funasr_nano_hf.tests | package-warning" in text
    assert "| WARNING | transformers.trainer | transformers-warning" in text
    assert text.count("marker-from-funasr-nano-hf") == 1  # one handler: no duplicates
    assert "| ERROR | rank 0 | run failed: ValueError: bad manifest: line 3" in text
    assert "Traceback (most recent call last):" in text and 'raise ValueError("bad manifest: line 3")' in text
    assert log.handler is None
    for name in (None, "transformers"):
        assert not [h for h in logging.getLogger(name).handlers if getattr(h, "baseFilename", None) == str(path)]


# ------------------------------------------------------------------------------------------------------
# FunASR's validation accuracy
# ------------------------------------------------------------------------------------------------------
def test_token_accuracy_is_funasrs():
    from funasr.metrics.compute_acc import compute_accuracy

    from funasr_nano_hf.training.trainer import token_accuracy

    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 9, 5, generator=generator)
    labels = torch.randint(0, 5, (3, 9), generator=generator)
    labels[:, :4] = -100  # prompt
    labels[2, 7:] = -100  # padding
    labels[0, 5:8] = logits[0, 4:7].argmax(-1)  # some right predictions
    expected = compute_accuracy(logits.argmax(-1)[:, :-1], labels[:, 1:], ignore_label=-100)
    assert token_accuracy(logits, labels) == pytest.approx(float(expected)) and float(expected) > 0
    assert token_accuracy(logits, torch.full_like(labels, -100)) is None
