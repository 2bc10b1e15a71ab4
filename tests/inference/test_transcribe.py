"""transcribe(): FunASR's prompts, paths or arrays, batched == one by one, kwargs reach generate."""

from __future__ import annotations

import glob

import numpy as np
import pytest
import soundfile as sf

from funasr_nano_hf import transcribe
from funasr_nano_hf.inference import default_max_new_tokens
from funasr_nano_hf.models import prompting


@pytest.mark.parametrize(
    "hotwords, language, itn",
    [([], None, True), ([], "中文", True), (["滨海新区", "房子"], None, False), (["a"], "英文", False)],
)
def test_instruction_is_funasr_get_prompt(tiny_reference, hotwords, language, itn):
    assert prompting.instruction(language, hotwords, itn) == tiny_reference.model.get_prompt(hotwords, language, itn)


def test_language_codes_map_to_checkpoint_names():
    assert prompting.instruction("en") == "语音转写成英文："
    assert prompting.instruction("zh", itn=False) == "语音转写成中文，不进行文本规整："


def _funasr_text(reference, path, instruction_text, max_new_tokens):
    """FunASR's model (its prompt building, embedding insertion, LLM) + its post-processing of the ids."""
    import re

    ids = reference.greedy(path, instruction_text, max_new_tokens=max_new_tokens)
    text = reference.tokenizer.decode(ids, skip_special_tokens=True)
    return re.sub(r"\s+", " ", text.replace("/sil", " "))


def test_transcripts_equal_funasr(tiny_model, tiny_reference, sample_wav, shared_dir):
    model, processor = tiny_model
    paths = [str(sample_wav)] + sorted(glob.glob(str(shared_dir / "data" / "tts" / "wav" / "valid" / "*.wav")))[:2]
    ours = transcribe(model, processor, paths, batch_size=3, max_new_tokens=20)
    assert ours == [_funasr_text(tiny_reference, p, prompting.instruction(), 20) for p in paths]
    # hotwords + language + no-ITN prompt: same text as FunASR with FunASR's prompt for the same options
    options = {"hotwords": ["滨海新区"], "language": "中文", "itn": False}
    funasr_prompt = tiny_reference.model.get_prompt(options["hotwords"], options["language"], options["itn"])
    assert transcribe(model, processor, paths[:1], max_new_tokens=20, **options) == [
        _funasr_text(tiny_reference, paths[0], funasr_prompt, 20)
    ]


def test_batched_equals_one_by_one_and_keeps_order(tiny_model, shared_dir):
    model, processor = tiny_model
    paths = sorted(glob.glob(str(shared_dir / "data" / "tts" / "wav" / "valid" / "*.wav")))[:5]
    arrays = [sf.read(p, dtype="float32")[0] for p in paths]
    one_by_one = [transcribe(model, processor, a, max_new_tokens=10)[0] for a in arrays]
    assert transcribe(model, processor, paths, batch_size=4, max_new_tokens=10) == one_by_one
    assert transcribe(model, processor, arrays[::-1], batch_size=2, max_new_tokens=10) == one_by_one[::-1]


def test_generate_kwargs_pass_through(tiny_model, sample_wav):
    model, processor = tiny_model
    short = transcribe(model, processor, str(sample_wav), max_new_tokens=2)[0]
    longer = transcribe(model, processor, str(sample_wav), max_new_tokens=12)[0]
    assert len(processor.tokenizer.encode(short)) <= 3 < len(processor.tokenizer.encode(longer))


def test_bad_inputs(tiny_model):
    model, processor = tiny_model
    with pytest.raises(ValueError, match="batch_size"):
        transcribe(model, processor, np.zeros(16000, dtype=np.float32), batch_size=0)
    with pytest.raises(ValueError, match="mono 1-D"):
        transcribe(model, processor, [np.zeros((2, 16000), dtype=np.float32)])


def test_default_cap_scales_with_duration():
    assert default_max_new_tokens(1.0) == 32
    assert default_max_new_tokens(10.0) == 140
    assert default_max_new_tokens(600.0) == 512
