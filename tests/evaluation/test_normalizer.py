"""The scoring normaliser: each documented step, and the tokenisation CER is computed over."""

from __future__ import annotations

import string

import pytest

from funasr_nano_hf.evaluation.normalizer import NORMALIZER_NAME, normalize_text, tokenize_for_cer


def test_name_is_pinned() -> None:
    # Changing the rules must come with a new name; this forces whoever edits the rules to look here.
    assert NORMALIZER_NAME == "funasr_nano_hf.mixed_v1"


def test_brief_example() -> None:
    assert tokenize_for_cer("我想问 Hello world，OK!") == ["我", "想", "问", "hello", "world", "ok"]
    assert normalize_text("我想问 Hello world，OK!") == "我想问 hello world ok"


def test_full_width_equals_half_width() -> None:
    assert normalize_text("ＨＥＬＬＯ　Ｗｏｒｌｄ１２３，ＯＫ！") == "hello world123 ok"
    assert (
        tokenize_for_cer("你好，世界！ＡＢＣ") == tokenize_for_cer("你好,世界!abc") == ["你", "好", "世", "界", "abc"]
    )
    # Half-width katakana is folded to full-width, so both widths are the same tokens.
    assert tokenize_for_cer("ｶﾀｶﾅ") == tokenize_for_cer("カタカナ") == ["カ", "タ", "カ", "ナ"]


def test_lower_case() -> None:
    assert normalize_text("Hello WORLD iPhone") == "hello world iphone"


@pytest.mark.parametrize("mark", list("，。！？、；：“”‘’（）《》【】…—·「」『』〈〉〔〕～・"))
def test_cjk_punctuation_removed(mark: str) -> None:
    assert tokenize_for_cer(f"好{mark}的") == ["好", "的"]


@pytest.mark.parametrize("mark", list(string.punctuation))
def test_ascii_punctuation_removed(mark: str) -> None:
    assert tokenize_for_cer(f"{mark}好{mark}的{mark}") == ["好", "的"]


def test_punctuation_splits_words_but_apostrophes_join() -> None:
    assert tokenize_for_cer("hello,world") == ["hello", "world"]
    assert tokenize_for_cer("state-of-the-art") == ["state", "of", "the", "art"]
    assert tokenize_for_cer("Don't it’s") == ["dont", "its"]


def test_other_symbols_are_kept() -> None:
    # Only punctuation is dropped; currency signs and the like are part of the token.
    assert tokenize_for_cer("5€ 好") == ["5€", "好"]


def test_whitespace_collapsed() -> None:
    assert normalize_text("  a \t\n b\u3000c\u200bd  ") == "a b cd"
    assert normalize_text("，。！") == ""
    assert tokenize_for_cer("  ，  ") == []


def test_cjk_characters_are_single_tokens() -> None:
    assert tokenize_for_cer("\u3400\u4e00") == ["\u3400", "\u4e00"]  # extension A, then the basic block
    assert tokenize_for_cer("\U00020000好") == ["\U00020000", "好"]  # extension B
    assert tokenize_for_cer("ひらがなカタカナー") == list("ひらがなカタカナー")
    assert tokenize_for_cer("한국어 공부") == ["한", "국", "어", "공", "부"]


def test_other_scripts_are_words_split_at_cjk_boundaries() -> None:
    assert tokenize_for_cer("我有3个苹果") == ["我", "有", "3", "个", "苹", "果"]
    assert tokenize_for_cer("用iPhone15拍照") == ["用", "iphone15", "拍", "照"]
    assert tokenize_for_cer("the quick brown fox") == ["the", "quick", "brown", "fox"]
    assert tokenize_for_cer("café naïve") == ["café", "naïve"]


@pytest.mark.parametrize(
    "text",
    ["我想问 Hello world，OK!", "ＡＢＣ　１２３…", "Don't  stop—now", "ｶﾀｶﾅ①²", "\ufeff前\u200b后"],
)
def test_idempotent(text: str) -> None:
    once = normalize_text(text)
    assert normalize_text(once) == once
    assert tokenize_for_cer(once) == tokenize_for_cer(text)


def test_rejects_non_string() -> None:
    with pytest.raises(TypeError, match="expects str"):
        normalize_text(None)  # type: ignore[arg-type]
