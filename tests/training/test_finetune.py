"""End to end: LoRA fine-tune of a tiny Fun-ASR-Nano (built by FunASR's classes) on the TTS test data
(`shared_dir` fixture) with examples/finetune.py in real processes: loss falls, CER from batched generation at every
validation, the adapter reloads and reproduces the CER, the n-best average is written AND evaluated, `final/` is the
last weights (the best with --load_best_model_at_end true), `final_merged/` is the merged adapter, the output folder's
model.pt is FunASR's layout and FunASR's AutoModel decodes with it like our model; early stopping counts epochs
with FunASR's epoch-end validation; without validation data the newest checkpoints are kept and averaged; an error
lands in train.log with its traceback. (kill -9 + --resume at five points of a run: tests/fault/test_kill_resume.py.)
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import soundfile as sf
import torch
import yaml
from helpers import finetune_cmd, run, tts_subset
from safetensors.torch import load_file

pytestmark = pytest.mark.slow


RECIPE = (
    "--max_epoch 3 --per_device_train_batch_size 4 --per_device_eval_batch_size 6 --validate_interval 12 "
    "--save_checkpoint_interval 12 --log_interval 4 --warmup_steps 2 --lr 5e-3 --lora_r 16 --eval_max_new_tokens 8 "
    "--keep_nbest_models 2 --avg_nbest_model 2 --early_stopping_patience 0 --use_cpu --seed 7 --merge_lora true"
).split()
# 8 train clips, batch 4: 2 steps per epoch; validations every 3 steps and at every epoch end
SMALL = (
    "--per_device_train_batch_size 4 --per_device_eval_batch_size 6 --log_interval 1 --warmup_steps 0 "
    "--lr_scheduler_type linear --eval_max_new_tokens 2 --use_cpu --seed 7 --num_workers 0"
).split()


def _history(out: Path) -> list[dict]:
    return json.loads((_newest_checkpoint(out) / "trainer_state.json").read_text())["log_history"]


def _newest_checkpoint(out: Path) -> Path:
    return max(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))


def _steps(out: Path) -> set[int]:
    return {int(p.name.split("-")[1]) for p in out.glob("checkpoint-*")}


def _adapter(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "adapter_model.safetensors"))


def _cer_of_adapter(model_dir: Path, adapter: Path, out: Path) -> float:
    """CER of `adapter` on the run's validation data, decoded outside the run (same batch size and token cap)."""
    from peft import PeftModel

    from funasr_nano_hf import load_pretrained
    from funasr_nano_hf.data.featurize import DataConfig, build_dataset
    from funasr_nano_hf.evaluation import compute_cer
    from funasr_nano_hf.inference import transcribe_featurized

    base, processor = load_pretrained(model_dir)
    model = PeftModel.from_pretrained(base, str(adapter)).eval()
    config = yaml.safe_load((out / "config.yaml").read_text())
    dataset, _ = build_dataset(config["data"]["valid_data"], processor, DataConfig())
    predictions = [d.text for d in transcribe_featurized(model, processor, dataset, batch_size=6, max_new_tokens=8)]
    return compute_cer(predictions, list(dataset["text"]))["cer"]


@pytest.fixture(scope="module")
def full_run(tiny_original_dir, data_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ft_full") / "out"
    run(finetune_cmd(tiny_original_dir, data_dir, out, *RECIPE))
    return out


@pytest.fixture(scope="module")
def small_data(shared_dir, tmp_path_factory) -> Path:
    return tts_subset(shared_dir, tmp_path_factory.mktemp("small_data"), train=8, valid=6)


def test_loss_falls_and_cer_each_validation(full_run):
    history = _history(full_run)
    losses = [h["loss"] for h in history if "loss" in h]
    assert losses[-1] < losses[0] - 1.0, losses
    evals = [h for h in history if "eval_loss" in h]
    assert [h["step"] for h in evals] == [12, 24, 36]  # the epoch ends are multiples of 12: validated once
    assert all(0 <= h["eval_cer"] < 10 and 0 <= h["eval_acc"] <= 1 for h in evals)
    log = (full_run / "train.log").read_text()
    assert "eval_cer" in log and "funasr_nano_hf.mixed_v1" in log
    assert (full_run / "curves.png").stat().st_size > 1000
    assert list(yaml.safe_load((full_run / "config.yaml").read_text())) == ["model", "data", "finetune", "training"]


def test_outputs_average_and_adapter_reload_reproduces_cer(full_run, tiny_original_dir):
    assert (full_run / "model_avg" / "adapter_model.safetensors").is_file()
    nbest = json.loads((full_run / "nbest.json").read_text())
    assert len(nbest["averaged"]) == 2 and nbest["metric"] == "eval_cer"
    final_metrics = json.loads((full_run / "all_results.json").read_text())
    cer = _cer_of_adapter(tiny_original_dir, full_run / "final", full_run)
    assert cer == pytest.approx(final_metrics["eval_cer"], abs=1e-9)


def test_the_average_is_evaluated(full_run, tiny_original_dir):
    """avg_eval_* in all_results.json and train.log are the metrics of model_avg/, not of the final model."""
    metrics = json.loads((full_run / "all_results.json").read_text())
    assert {"avg_eval_loss", "avg_eval_cer", "avg_eval_acc"} <= set(metrics)
    assert metrics["avg_eval_loss"] != metrics["eval_loss"]  # another model (the average of two checkpoints)
    cer = _cer_of_adapter(tiny_original_dir, full_run / "model_avg", full_run)
    assert cer == pytest.approx(metrics["avg_eval_cer"], abs=1e-9)
    log = (full_run / "train.log").read_text()
    assert f"| avg_eval_loss {metrics['avg_eval_loss']:.6g} |" in log and "| avg_eval_cer " in log


def test_final_is_the_last_checkpoint_and_merged_is_the_merged_adapter(full_run, tiny_original_dir):
    """Default (FunASR's model.pt = the latest checkpoint): final/ holds the weights of the last checkpoint, not
    the n-best ones. final_merged/ (--merge_lora true) is the base with final/'s adapter merged."""
    from peft import PeftModel

    from funasr_nano_hf import load_pretrained

    final = _adapter(full_run / "final")
    last = _adapter(full_run / "checkpoint-36")
    assert final.keys() == last.keys() and all(torch.equal(final[k], last[k]) for k in final)

    merged_saved, _ = load_pretrained(full_run / "final_merged")
    base, _ = load_pretrained(tiny_original_dir)
    expected = PeftModel.from_pretrained(base, str(full_run / "final")).merge_and_unload().state_dict()
    saved = merged_saved.state_dict()
    assert saved.keys() == expected.keys()
    for key, value in expected.items():
        torch.testing.assert_close(saved[key], value.to(saved[key].dtype), rtol=0, atol=0)
    plain, _ = load_pretrained(tiny_original_dir)
    changed = [k for k, v in plain.state_dict().items() if not torch.equal(v, saved[k])]
    assert changed and all(
        k.endswith(("q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight")) for k in changed
    )


def test_model_pt_is_funasrs_and_funasr_decodes_like_us(full_run, tiny_original_dir, shared_dir, tmp_path):
    """The output folder's model.pt is the export of final/ (FunASR's layout, LoRA merged), and FunASR's own
    AutoModel, pointed at the output folder, decodes with it exactly like our model loaded from it."""
    from funasr_nano_hf import load_pretrained
    from funasr_nano_hf.conversion.export import export_funasr
    from funasr_nano_hf.conversion.loading import read_model_pt
    from funasr_nano_hf.inference import generate_ids
    from funasr_nano_hf.models.prompting import instruction
    from funasr_nano_hf.testing.funasr_reference import FunASRReference

    reference_export = tmp_path / "export"
    export_funasr(tiny_original_dir, tiny_original_dir, reference_export, adapter_dir=full_run / "final")
    ours_pt, expected_pt = read_model_pt(full_run / "model.pt"), read_model_pt(reference_export / "model.pt")
    assert list(ours_pt) == list(expected_pt) and all(torch.equal(ours_pt[k], expected_pt[k]) for k in ours_pt)
    base_pt = read_model_pt(tiny_original_dir / "model.pt")
    assert any(not torch.equal(base_pt[k], ours_pt[k]) for k in base_pt)  # the fine-tune is in it
    assert (full_run / "funasr_config.yaml").read_text() == (tiny_original_dir / "config.yaml").read_text()
    assert (
        json.loads((full_run / "configuration.json").read_text())["file_path_metas"]["config"] == "funasr_config.yaml"
    )

    ours, processor = load_pretrained(full_run)  # configuration.json -> funasr_config.yaml, as FunASR reads it
    reference = FunASRReference(full_run)  # funasr.AutoModel(model=<output folder>)
    wavs = [shared_dir / "data" / "real" / "sample.wav"]
    wavs += sorted((shared_dir / "data" / "tts" / "wav" / "valid").glob("*.wav"))[:2]
    for wav in wavs:
        waveform = sf.read(str(wav), dtype="float32")[0]
        ids = generate_ids(ours, processor, [waveform], max_new_tokens=12)[0].tolist()
        assert ids == reference.greedy(str(wav), instruction(), max_new_tokens=12), wav


@pytest.fixture(scope="module")
def early_stopped(tiny_original_dir, small_data, tmp_path_factory) -> Path:
    """Learning rate 0: the validation loss never improves after epoch 1. Validations every 3 steps, epochs of 2."""
    out = tmp_path_factory.mktemp("ft_es") / "out"
    run(
        finetune_cmd(
            tiny_original_dir,
            small_data,
            out,
            *SMALL,
            *"--max_epoch 6 --validate_interval 3 --save_checkpoint_interval 3 --lr 0".split(),
            *"--early_stopping_patience 2".split(),
        )
    )
    return out


def test_early_stopping_counts_epochs_with_epoch_end_validation(early_stopped):
    """FunASR validates at every epoch end (steps 2, 4, 6) besides every validate_interval (3, 6; 6 once) and
    stops after 2 epochs without a better epoch-end loss: after epoch 3 = step 6 of 12. Counting evaluations
    (transformers' EarlyStoppingCallback) would stop at step 4."""
    history = _history(early_stopped)
    assert [h["step"] for h in history if "eval_loss" in h] == [2, 3, 4, 6]
    assert max(h["step"] for h in history if "loss" in h) == 6
    assert _steps(early_stopped) == {2, 3, 4, 6}  # epoch ends and every 3 steps; the stopping epoch's too
    state = json.loads((early_stopped / "checkpoint-6" / "trainer_state.json").read_text())
    stopper = state["stateful_callbacks"]["EpochEarlyStoppingCallback"]["attributes"]
    assert [(h["epoch"], h["step"]) for h in stopper["history"]] == [(1, 2), (2, 4), (3, 6)]
    assert stopper["epochs_no_improve"] == 2
    assert "early stopping after epoch 3" in (early_stopped / "train.log").read_text()


@pytest.fixture(scope="module")
def best_run(tiny_original_dir, small_data, tmp_path_factory) -> Path:
    """n-best and the Trainer's best by FunASR's 'acc' (higher is better; the tiny model's accuracy stays 0, so
    the first validated checkpoint is the best), the best loaded at the end."""
    out = tmp_path_factory.mktemp("ft_best") / "out"
    options = (
        "--max_epoch 2 --validate_interval 1 --save_checkpoint_interval 1 --lr 0.1 --early_stopping_patience 0 "
        "--keep_nbest_models 2 --avg_nbest_model 2 --avg_keep_nbest_models_type acc "
        "--eval_strategy steps --load_best_model_at_end true"
    )
    run(finetune_cmd(tiny_original_dir, small_data, out, *SMALL, *options.split()))
    return out


def test_load_best_model_at_end_true_gives_the_best_and_acc_ranks_higher_first(best_run):
    state = json.loads((_newest_checkpoint(best_run) / "trainer_state.json").read_text())
    accuracies = {h["step"]: h["eval_acc"] for h in state["log_history"] if "eval_acc" in h}
    best = Path(state["best_model_checkpoint"])
    assert best.name != _newest_checkpoint(best_run).name, "the test needs a best that is not the last"
    final = _adapter(best_run / "final")
    assert all(torch.equal(final[k], v) for k, v in _adapter(best).items())
    assert not all(torch.equal(final[k], v) for k, v in _adapter(_newest_checkpoint(best_run)).items())
    nbest = json.loads((best_run / "nbest.json").read_text())
    assert (nbest["metric"], nbest["greater_is_better"]) == ("eval_acc", True)
    ranked = sorted(accuracies, key=lambda step: (-accuracies[step], step))
    assert [e["step"] for e in nbest["averaged"]] == ranked[:2]


@pytest.fixture(scope="module")
def unvalidated(tiny_original_dir, small_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ft_nv") / "out"
    options = "--max_epoch 3 --save_checkpoint_interval 1 --lr 1e-2 --keep_nbest_models 2 --avg_nbest_model 2"
    run(finetune_cmd(tiny_original_dir, small_data, out, *SMALL, *options.split(), valid=False))
    return out


def test_nbest_without_validation_keeps_and_averages_the_newest(unvalidated):
    """FunASR 1.4.16 cannot train without validation data; we keep the newest keep_nbest_models checkpoints and
    average the newest avg_nbest_model."""
    assert _steps(unvalidated) == {5, 6}
    nbest = json.loads((unvalidated / "nbest.json").read_text())
    assert nbest["ranked_by"] == "recency" and [e["step"] for e in nbest["averaged"]] == [6, 5]
    five, six = _adapter(unvalidated / "checkpoint-5"), _adapter(unvalidated / "checkpoint-6")
    averaged = _adapter(unvalidated / "model_avg")
    assert any(not torch.equal(five[k], six[k]) for k in five)
    for key in averaged:
        torch.testing.assert_close(averaged[key], (five[key].double() + six[key].double()).div(2).to(five[key].dtype))
    metrics = json.loads((unvalidated / "all_results.json").read_text())
    assert not any(key.startswith(("eval_", "avg_eval_")) for key in metrics)
    assert (unvalidated / "model.pt").is_file()
    assert "early_stopping_patience 3 needs validation data" in (unvalidated / "train.log").read_text()


def test_a_data_error_lands_in_train_log_with_its_traceback(tiny_original_dir, small_data, tmp_path):
    bad = tmp_path / "bad.jsonl"
    lines = (small_data / "train.jsonl").read_text(encoding="utf-8").splitlines(True)[:3]
    bad.write_text("".join(lines) + '{"key": "gone", "wav": "wav/missing.wav", "txt": "abc"}\n', encoding="utf-8")
    (tmp_path / "wav").symlink_to(small_data / "wav")
    out = tmp_path / "out"
    cmd = finetune_cmd(tiny_original_dir, small_data, out, *SMALL, "--train_data", str(bad), valid=False)
    console = run(cmd, returncode=1)
    assert "missing audio file" in console
    log = (out / "train.log").read_text(encoding="utf-8")
    assert log.index("run started") < log.index("| ERROR | rank 0 | run failed: DataError")
    assert "Traceback (most recent call last):" in log and f"{bad}:4" in log and "missing audio file" in log


def test_evaluate_saved_weights_evaluates_them_then_restores(tiny_original_dir, small_data, tmp_path):
    """`FunAsrNanoTrainer.evaluate_saved_weights` (how the n-best average is evaluated): the metrics are those of
    the saved adapter, and the trainer's model is the restored one afterwards (what push_to_hub then saves)."""
    from transformers import TrainingArguments

    from funasr_nano_hf import load_pretrained
    from funasr_nano_hf.data.collator import FunAsrNanoCollator
    from funasr_nano_hf.data.featurize import DataConfig, build_dataset
    from funasr_nano_hf.training.arguments import ModelArguments
    from funasr_nano_hf.training.model_setup import prepare_model_for_finetuning
    from funasr_nano_hf.training.trainer import FunAsrNanoTrainer

    def trainer_for(model, processor, valid) -> FunAsrNanoTrainer:
        args = TrainingArguments(
            str(tmp_path / "run"), per_device_eval_batch_size=6, use_cpu=True, report_to=[], remove_unused_columns=False
        )
        collator = FunAsrNanoCollator(pad_token_id=processor.tokenizer.pad_token_id)
        return FunAsrNanoTrainer(
            model=model,
            args=args,
            eval_dataset=valid,
            data_collator=collator,
            processor=processor,
            eval_max_new_tokens=4,
        )

    model, processor = load_pretrained(tiny_original_dir)
    model = prepare_model_for_finetuning(model, ModelArguments(model_dir=str(tiny_original_dir), lora_dropout=0.0))
    valid, _ = build_dataset([str(small_data / "valid.jsonl")], processor, DataConfig(cache_dir=str(tmp_path / "c")))
    trainer = trainer_for(model, processor, valid)
    trainer.save_model(str(tmp_path / "a"))  # lora_B = 0: the base model's outputs
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator))
    trainer.save_model(str(tmp_path / "b"))
    own = trainer.evaluate()
    saved = trainer.evaluate_saved_weights(tmp_path / "a", restore=tmp_path / "b", metric_key_prefix="avg_eval")
    assert saved["avg_eval_loss"] != own["eval_loss"]
    assert trainer.evaluate()["eval_loss"] == own["eval_loss"]  # restored

    plain, processor = load_pretrained(tiny_original_dir)  # what "a" is: the base model
    reference = trainer_for(plain, processor, valid).evaluate()
    assert saved["avg_eval_loss"] == pytest.approx(reference["eval_loss"], rel=1e-6)
    assert saved["avg_eval_cer"] == reference["eval_cer"] and saved["avg_eval_acc"] == reference["eval_acc"]
