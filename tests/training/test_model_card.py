"""The model card: metadata that huggingface_hub parses and validates (model-index with CER / WER / MER and the
normaliser, base model as a Hub id only, languages, license, pipeline tag, library tags), the Trainer's
`create_model_card` keyword arguments honoured, and the text (data, results, recipe, use)."""

from __future__ import annotations

import pytest
import yaml
from huggingface_hub import ModelCard, metadata_eval_result
from huggingface_hub.repocard_data import model_index_to_eval_results
from transformers import TrainingArguments

from funasr_nano_hf import load_pretrained
from funasr_nano_hf.evaluation import NORMALIZER_NAME
from funasr_nano_hf.training.model_card import CardInfo, CardOptions, build_model_card, hub_id, languages_of
from funasr_nano_hf.training.trainer import FunAsrNanoTrainer

METRICS = {"eval_loss": 1.5, "eval_cer": 0.125, "eval_wer": 0.4, "eval_mer": 0.2, "eval_acc": 0.7}


def _info(**changes) -> CardInfo:
    fields = dict(
        base_model="FunAudioLLM/Fun-ASR-Nano-2512", train_data=["train.jsonl"], valid_data=["valid.jsonl"],
        train_examples=16, train_hours=0.05, valid_examples=4, valid_hours=0.01, use_lora=True,
        options={"learning_rate": 1e-4, "lora": "r=8"}, recipe={"model": {"lora_r": 8}},
        base_model_hub_id="FunAudioLLM/Fun-ASR-Nano-2512", base_layout="original", languages=["zh", "en"],
        license="apache-2.0",
    )  # fmt: skip
    fields.update(changes)
    return CardInfo(**fields)


def _parsed(card: ModelCard) -> ModelCard:
    """The card as the Hub reads it back; invalid metadata raises (no ignore_metadata_errors)."""
    return ModelCard(str(card), ignore_metadata_errors=False)


def test_metadata_validates_and_holds_the_error_rates_with_the_normaliser():
    card = _parsed(build_model_card(_info(), METRICS, "fun-asr-nano-lora"))
    data = card.data
    assert data.base_model == "FunAudioLLM/Fun-ASR-Nano-2512" and data.license == "apache-2.0"
    assert data.language == ["zh", "en"] and data.pipeline_tag == "automatic-speech-recognition"
    assert data.library_name == "peft" and {"peft", "transformers", "funasr_nano_hf"} <= set(data.tags)
    name, results = model_index_to_eval_results(data.to_dict()["model-index"])
    assert name == "fun-asr-nano-lora"
    assert {r.metric_type: r.metric_value for r in results} == {"cer": 0.125, "wer": 0.4, "mer": 0.2}
    assert all(NORMALIZER_NAME in r.metric_name and r.task_type == "automatic-speech-recognition" for r in results)
    # huggingface_hub's own builder gives the same CER entry
    expected = metadata_eval_result(
        model_pretty_name="fun-asr-nano-lora", task_pretty_name="automatic-speech-recognition",
        task_id="automatic-speech-recognition", metrics_pretty_name=results[0].metric_name, metrics_id="cer",
        metrics_value=0.125, dataset_pretty_name="valid.jsonl", dataset_id="custom",
    )  # fmt: skip
    ours = data.to_dict()["model-index"][0]["results"][0]
    theirs = expected["model-index"][0]["results"][0]
    theirs_cer = {k: v for k, v in theirs["metrics"][0].items() if k != "verified"}  # unverified: left out by ours
    assert ours["metrics"][0] == theirs_cer and ours["dataset"] == theirs["dataset"]


def test_a_local_base_is_named_in_the_text_never_in_the_metadata(tmp_path):
    info = _info(base_model=str(tmp_path), base_model_hub_id=None, base_model_dir=str(tmp_path), license=None)
    card = _parsed(build_model_card(info, {}, "run"))
    front = yaml.safe_load(str(card).split("---")[1])
    assert "base_model" not in front and "license" not in front and "model-index" not in front
    assert str(tmp_path) in card.text and "No evaluation yet." in card.text
    assert 'import_allowlist=["funasr_nano_hf"]' in card.text  # an original base needs peft's allowlist


def test_the_merged_model_is_a_transformers_model():
    card = _parsed(build_model_card(_info(), METRICS, "m", merged=True))
    assert card.data.library_name == "transformers" and "peft" not in card.data.tags
    assert "LoRA merged" in card.text and "load_pretrained" in card.text


def test_trainer_create_model_card_honours_its_keyword_arguments(tiny_original_dir, tmp_path):
    model, processor = load_pretrained(tiny_original_dir)
    args = TrainingArguments(str(tmp_path), use_cpu=True, report_to=[])
    trainer = FunAsrNanoTrainer(model=model, args=args, processor=processor, card_info=_info(use_lora=False))
    trainer.state.log_history = [{"eval_cer": 0.3, "step": 1}, {"eval_cer": 0.25, "eval_wer": 0.5, "step": 2}]
    trainer.create_model_card(
        language="yue", license="mit", tags=["cantonese"], model_name="my-asr", finetuned_from="someone/base-model",
        tasks="automatic-speech-recognition", dataset_tags="someone/my-corpus", dataset="My corpus",
        dataset_args="clean",
    )  # fmt: skip
    card = ModelCard.load(tmp_path / "README.md", ignore_metadata_errors=False)
    data = card.data
    assert (data.language, data.license, data.base_model, data.datasets) == (
        ["yue"],
        "mit",
        "someone/base-model",
        ["someone/my-corpus"],
    )
    assert "cantonese" in data.tags and data.library_name == "transformers"
    name, results = model_index_to_eval_results(data.to_dict()["model-index"])
    assert name == "my-asr" and {r.metric_type: r.metric_value for r in results} == {"cer": 0.25, "wer": 0.5}
    assert {(r.dataset_type, r.dataset_name, r.dataset_args["config"]) for r in results} == {
        ("someone/my-corpus", "My corpus", "clean")
    }
    # the options stay for folders saved afterwards
    trainer.save_model(str(tmp_path / "later"))
    assert ModelCard.load(tmp_path / "later" / "README.md").data.license == "mit"
    with pytest.raises(TypeError, match="unknown argument"):
        trainer.create_model_card(licence="mit")


def test_card_options_and_helpers():
    assert CardOptions.from_kwargs({"language": "zh"}).language == "zh"
    assert hub_id("FunAudioLLM/Fun-ASR-Nano-2512") == "FunAudioLLM/Fun-ASR-Nano-2512"
    assert hub_id("FunAudioLLM/Fun-ASR-Nano-2512", hub="ms") is None  # a ModelScope id is no HF Hub id
    assert hub_id("/definitely/not/here") is None and hub_id("name-without-org") is None
    assert languages_of(["今天天气很好", "hello world", "我用iPhone"]) == ["zh", "en"]
    assert languages_of(["今天天气很好"] * 30 + ["OK"]) == ["zh"]
