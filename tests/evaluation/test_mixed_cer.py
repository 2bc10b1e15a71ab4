"""The bundled `evaluate` module (CER / WER / mixed error rate): hand-computed values, empty-text rules, offline
loading."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jiwer
import pytest

from funasr_nano_hf.evaluation import MIXED_CER_PATH, NORMALIZER_NAME, compute_cer, load_cer_metric

_OFFLINE_SCRIPT = textwrap.dedent(
    """
    import json, socket, sys

    def _no_network(*args, **kwargs):
        raise OSError("network access attempted during offline metric load")

    socket.socket.connect = _no_network
    socket.create_connection = _no_network

    import evaluate
    from funasr_nano_hf.evaluation import load_cer_metric

    by_path = evaluate.load(sys.argv[1])
    helper = load_cer_metric()
    args = dict(predictions=["我想问 hello word ok"], references=["我想问 Hello world，OK!"])
    print(json.dumps({
        "by_path": by_path.compute(**args),
        "helper": helper.compute(**args),
        "module_file": sys.modules[type(by_path).__module__].__file__,
    }))
    """
)


@pytest.fixture(scope="module")
def offline_run(tmp_path_factory: pytest.TempPathFactory):
    """Start the offline-load subprocess (see `test_loads_offline_from_package_path`) before anything else.

    Importing `evaluate` costs ~9 s (it pulls in transformers.pipelines); started first, the subprocess's
    import overlaps the in-process one instead of doubling the module's run time.
    """
    root = tmp_path_factory.mktemp("offline")
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_EVALUATE_OFFLINE": "1",
        # Empty HF_HOME: nothing may come from a previously populated cache.
        "HF_HOME": str(root / "hf_home"),
        "HF_MODULES_CACHE": str(root / "modules"),
    }
    proc = subprocess.Popen(
        [sys.executable, "-c", _OFFLINE_SCRIPT, str(MIXED_CER_PATH)],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    yield proc, root
    if proc.poll() is None:
        proc.kill()
        proc.communicate()


@pytest.fixture(scope="module")
def metric(offline_run):
    return load_cer_metric()


def score(metric, predictions: list[str], references: list[str]) -> dict:
    return metric.compute(predictions=predictions, references=references)


def test_identical_is_zero_and_reports_normalizer(metric) -> None:
    out = score(metric, ["我想问 Hello world，OK!"], ["我想问 Hello world，OK!"])
    assert out == {
        "cer": 0.0,
        "wer": 0.0,
        "mer": 0.0,
        "substitutions": 0,
        "deletions": 0,
        "insertions": 0,
        "hits": 6,
        "reference_tokens": 6,
        "reference_characters": 3 + 10 + 2,
        "reference_words": 4,
        "normalizer": NORMALIZER_NAME,
    }


def test_one_substitution_in_six_tokens(metric) -> None:
    # Reference tokens: 我 想 问 hello world ok. "word" replaces "world": one whole-word substitution.
    out = score(metric, ["我想问 hello word ok"], ["我想问 Hello world，OK!"])
    assert out["mer"] == pytest.approx(1 / 6)
    assert (out["substitutions"], out["deletions"], out["insertions"], out["hits"]) == (1, 0, 0, 5)


def test_english_is_scored_by_word(metric) -> None:
    # "sat" -> "sit" is one substitution (not one letter of 17); "the" before "mat" is one deletion.
    out = score(metric, ["the cat sit on mat"], ["The cat sat on the mat."])
    assert out["mer"] == pytest.approx(2 / 6)
    assert (out["substitutions"], out["deletions"], out["insertions"]) == (1, 1, 0)


def test_mixed_zh_en(metric) -> None:
    # Reference tokens: 我 今 天 用 iphone 拍 照 (7). "I phone" is one substitution plus one insertion,
    # and 照 -> 招 one more substitution.
    out = score(metric, ["我今天用 I phone 拍招"], ["我今天用iPhone拍照。"])
    assert out["reference_tokens"] == 7
    assert (out["substitutions"], out["deletions"], out["insertions"]) == (2, 0, 1)
    assert out["mer"] == pytest.approx(3 / 7)


def test_full_width_and_punctuation_do_not_count(metric) -> None:
    out = score(metric, ["ＯＫ，我们开始吧！Ｈｅｌｌｏ　ｗｏｒｌｄ"], ["ok 我们开始吧 hello world"])
    assert out["mer"] == 0.0
    assert out["reference_tokens"] == 8


def test_corpus_level_not_mean_of_utterances(metric) -> None:
    # One error in a 2-token and one in an 8-token reference: 2/10, where the per-utterance mean is 0.3125.
    out = score(metric, ["你", "今天天气好我们走"], ["你好", "今天天气好我们去"])
    assert out["reference_tokens"] == 10
    assert out["mer"] == pytest.approx(0.2)


def test_empty_prediction_counts_deletions(metric) -> None:
    out = score(metric, ["", "你好"], ["我想问 hello", "你好"])
    assert (out["deletions"], out["substitutions"], out["insertions"], out["hits"]) == (4, 0, 0, 2)
    assert out["mer"] == pytest.approx(4 / 6)


def test_empty_reference_counts_insertions_only(metric) -> None:
    # The punctuation-only reference normalises to nothing: its prediction's 2 tokens are insertions and
    # it adds nothing to the denominator.
    out = score(metric, ["hello 好", "你好"], ["。。。", "你好"])
    assert (out["insertions"], out["reference_tokens"]) == (2, 2)
    assert out["mer"] == pytest.approx(1.0)


def test_insertions_can_exceed_one(metric) -> None:
    out = score(metric, ["好好好好"], ["好"])
    assert out["mer"] == pytest.approx(3.0)


def test_all_references_empty_raises(metric) -> None:
    with pytest.raises(ValueError, match="references are empty"):
        score(metric, ["你好", ""], ["", "，"])


@pytest.mark.parametrize(
    ("predictions", "references"),
    [
        (["今天天气不错"], ["今天天气很好"]),
        (["我们去公园玩吧", "你好"], ["我们一起去公园", "你好吗朋友"]),
        (["北京欢迎你们大家"], ["北京欢迎你"]),
        (["语音识别", "模型训练数据"], ["语音识别系统", "模型数据"]),
    ],
)
def test_agrees_with_jiwer_cer_on_pure_chinese(metric, predictions: list[str], references: list[str]) -> None:
    out = score(metric, predictions, references)
    expected = jiwer.process_characters(references, predictions)
    assert out["mer"] == pytest.approx(jiwer.cer(reference=references, hypothesis=predictions))
    assert out["cer"] == out["mer"] > 0  # on Chinese the mixed rate is the character error rate
    assert (out["substitutions"], out["deletions"], out["insertions"], out["hits"]) == (
        expected.substitutions,
        expected.deletions,
        expected.insertions,
        expected.hits,
    )


def test_compute_cer_matches_metric(metric) -> None:
    preds, refs = ["我想问 hello word ok", ""], ["我想问 Hello world，OK!", "好"]
    assert compute_cer(preds, refs) == score(metric, preds, refs)
    assert compute_cer(preds, refs)["mer"] == pytest.approx(2 / 7)


def test_loads_offline_from_package_path(offline_run) -> None:
    # Fresh interpreter, because the offline switches are read at import time; sockets are disabled in it
    # as a backstop.
    proc, root = offline_run
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr[-4000:]
    result = json.loads(stdout.strip().splitlines()[-1])
    for key in ("by_path", "helper"):
        assert result[key]["mer"] == pytest.approx(1 / 6)
        assert result[key]["normalizer"] == NORMALIZER_NAME
    # evaluate imported a copy from its modules cache, not the package file itself: the absolute import of
    # the normaliser is what makes that copy work.
    assert Path(result["module_file"]).is_relative_to(root / "modules")


def test_english_characters_and_words(metric) -> None:
    # Characters without spaces: "thecatsatonthemat" (17) vs "thecatsitonmat": a -> i and "the" deleted, 4 edits.
    out = score(metric, ["the cat sit on mat"], ["The cat sat on the mat."])
    assert out["cer"] == pytest.approx(4 / 17) and out["reference_characters"] == 17
    assert out["wer"] == pytest.approx(2 / 6) == out["mer"]  # on English the mixed rate is the WER


def test_mixed_text_in_three_units(metric) -> None:
    # Characters: 我今天用iphone拍照 (12), one substitution (照 -> 招); spaces in the prediction cost nothing.
    # Words: the reference is one unspaced run, the prediction four: 1 substitution + 3 insertions -- the
    # reason Chinese is not judged by WER.
    out = score(metric, ["我今天用 I phone 拍招"], ["我今天用iPhone拍照。"])
    assert out["cer"] == pytest.approx(1 / 12)
    assert out["wer"] == pytest.approx(4.0) and out["reference_words"] == 1
    assert out["mer"] == pytest.approx(3 / 7)
