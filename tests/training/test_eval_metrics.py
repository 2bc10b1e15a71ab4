"""Evaluation decoding: CER / WER / mixed error rate with honest names, a user's transcript metrics, a progress bar,
and the same number of `generate` calls on every rank (2-process ZeRO-3 with uneven shards finishes and agrees with
one process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO, finetune_args, tts_subset
from transformers import TrainingArguments

from funasr_nano_hf import load_pretrained
from funasr_nano_hf.data.collator import FunAsrNanoCollator
from funasr_nano_hf.data.featurize import DataConfig, build_dataset
from funasr_nano_hf.evaluation import NORMALIZER_NAME, compute_error_rates
from funasr_nano_hf.inference import transcribe_featurized
from funasr_nano_hf.training.trainer import FunAsrNanoTrainer


@pytest.fixture(scope="module")
def model_and_valid(tiny_original_dir, shared_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_metrics")
    data = tts_subset(shared_dir, root / "data", train=1, valid=5)
    model, processor = load_pretrained(tiny_original_dir)
    valid, _ = build_dataset([str(data / "valid.jsonl")], processor, DataConfig(cache_dir=str(root / "cache")))
    return model, processor, valid


def _trainer(model_and_valid, tmp_path, **options) -> FunAsrNanoTrainer:
    model, processor, valid = model_and_valid
    args = TrainingArguments(
        str(tmp_path / "run"), per_device_eval_batch_size=2, use_cpu=True, report_to=[], remove_unused_columns=False
    )
    return FunAsrNanoTrainer(
        model=model,
        args=args,
        eval_dataset=valid,
        data_collator=FunAsrNanoCollator(pad_token_id=processor.tokenizer.pad_token_id),
        processor=processor,
        eval_max_new_tokens=6,
        **options,
    )


def test_cer_wer_mer_and_a_user_metric_on_the_same_transcripts(model_and_valid, tmp_path, capfd):
    seen: list[tuple[list[str], list[str]]] = []

    def exact_match(predictions: list[str], references: list[str]) -> dict[str, float]:
        seen.append((predictions, references))
        return {"exact": sum(p == r for p, r in zip(predictions, references)) / len(references), "eval_clips": 5}

    trainer = _trainer(model_and_valid, tmp_path, compute_transcript_metrics=exact_match)
    metrics = trainer.evaluate()
    model, processor, valid = model_and_valid
    # the same decoding outside the trainer (batch 2, the same cap), scored by the package's metric
    predictions = [d.text for d in transcribe_featurized(model, processor, valid, batch_size=2, max_new_tokens=6)]
    expected = compute_error_rates(predictions, list(valid["text"]))
    assert {k: metrics[f"eval_{k}"] for k in ("cer", "wer", "mer")} == {k: expected[k] for k in ("cer", "wer", "mer")}
    assert seen == [(predictions, list(valid["text"]))]  # raw strings in dataset order
    assert metrics["eval_exact"] == 0.0 and metrics["eval_clips"] == 5  # prefixed once, not twice
    err = capfd.readouterr().err
    assert "decoding for CER" in err and "3/3" in err  # the progress bar: 5 clips in batches of 2


def test_a_user_metric_may_not_shadow_a_built_in_one_or_be_no_number(model_and_valid, tmp_path):
    trainer = _trainer(model_and_valid, tmp_path, compute_transcript_metrics=lambda p, r: {"cer": 0.0})
    with pytest.raises(ValueError, match="'cer', which the evaluation already reports as eval_cer"):
        trainer.transcript_metrics(["好"], ["好"], "eval")
    trainer.compute_transcript_metrics = lambda p, r: {"loss": 0.0}
    with pytest.raises(ValueError, match="'loss', which the evaluation already reports as eval_loss"):
        trainer.transcript_metrics(["好"], ["好"], "eval", taken={"eval_loss": 1.0})
    trainer.compute_transcript_metrics = lambda p, r: {"note": "fine"}
    with pytest.raises(TypeError, match="'note' must be a number"):
        trainer.transcript_metrics(["好"], ["好"], "eval")


def test_the_log_names_every_rate_and_the_normaliser(model_and_valid, tmp_path, caplog):
    trainer = _trainer(model_and_valid, tmp_path)
    with caplog.at_level("INFO", logger="funasr_nano_hf.training.trainer"):
        trainer.evaluate()
    line = next(r.getMessage() for r in caplog.records if NORMALIZER_NAME in r.getMessage())
    assert all(name in line for name in ("CER", "WER", "MER")) and "on 5 utterances" in line


@pytest.mark.slow
def test_zero3_two_processes_uneven_eval_shards_finish_with_one_process_cer(tiny_original_dir, shared_dir, tmp_path):
    """17 validation clips over 2 ranks (shards of 9 and 8) in eval batches of 8: rank 0 decodes 2 batches,
    rank 1 one real batch and one padding batch. Without the padding rank 0's second `generate` gathers ZeRO-3
    parameters while rank 1 has moved on to gathering the transcripts: on CPU/gloo rank 1 aborts (observed with
    the padding removed: SIGABRT, "Connection reset by peer" on rank 0), on GPUs/NCCL the run hangs. The run's
    CER must equal the CER of its final adapter decoded in one process."""
    from peft import PeftModel

    data = tts_subset(shared_dir, tmp_path / "data", train=8, valid=17)
    out = tmp_path / "out"
    env = {
        **os.environ,
        "DS_ACCELERATOR": "cpu",
        "CUDA_VISIBLE_DEVICES": "",
        "OMP_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    cmd = [
        str(Path(sys.executable).parent / "accelerate"), "launch",
        "--config_file", str(REPO / "examples" / "accelerate" / "deepspeed_zero3.yaml"), "--num_processes", "2",
        "--main_process_port", str(29500 + os.getpid() % 1000),
        *finetune_args(
            tiny_original_dir, data, out,
            *"--max_epoch 1 --batch_size 4 --batch_type example --per_device_eval_batch_size 8 --eval_max_new_tokens 4 "
            "--early_stopping_patience 0 --dataloader_num_workers 0 --ddp_backend gloo --seed 7".split(),
        ),
    ]  # fmt: skip
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-6000:]
    metrics = json.loads((out / "all_results.json").read_text())

    base, processor = load_pretrained(tiny_original_dir)
    model = PeftModel.from_pretrained(base, str(out / "final")).eval()
    valid, _ = build_dataset([str(data / "valid.jsonl")], processor, DataConfig(cache_dir=str(tmp_path / "cache")))
    assert len(valid) == 17
    predictions = [d.text for d in transcribe_featurized(model, processor, valid, batch_size=8, max_new_tokens=4)]
    expected = compute_error_rates(predictions, list(valid["text"]))
    assert metrics["eval_cer"] == pytest.approx(expected["cer"], abs=1e-12)
    assert metrics["eval_mer"] == pytest.approx(expected["mer"], abs=1e-12)
