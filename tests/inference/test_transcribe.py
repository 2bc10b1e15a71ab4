"""transcribe(): FunASR's prompts, paths or arrays, batched == one by one, kwargs reach generate; one decoding
loop (`decode_batches`) behind transcribe, transcribe_detailed and the Trainer's decoding of featurized rows."""

from __future__ import annotations

import glob
import json
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
import torch

from funasr_nano_hf import transcribe
from funasr_nano_hf.inference import (
    Decoded,
    GenerationBatch,
    decode_batches,
    default_max_new_tokens,
    transcribe_detailed,
    transcribe_featurized,
)
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


def test_transcribe_is_the_texts_of_transcribe_detailed(tiny_model, shared_dir):
    model, processor = tiny_model
    paths = sorted(glob.glob(str(shared_dir / "data" / "tts" / "wav" / "valid" / "*.wav")))[:5]
    detailed = transcribe_detailed(model, processor, paths, batch_size=2, max_new_tokens=10)
    assert [list(result) for result in detailed] == [["text", "duration", "hit_limit", "repeated"]] * len(paths)
    assert transcribe(model, processor, paths, batch_size=2, max_new_tokens=10) == [r["text"] for r in detailed]


def test_featurized_rows_decode_like_their_audio(tiny_model, shared_dir, tmp_path):
    """The Trainer's CER decoding (featurized dataset rows: the training prompt, tokenised by the data pipeline,
    left-padded by the generation collator) gives the texts `transcribe` gives for the same clips."""
    from funasr_nano_hf.data.featurize import DataConfig, build_dataset

    model, processor = tiny_model
    tts = shared_dir / "data" / "tts"
    rows = [json.loads(line) for line in (tts / "valid.jsonl").read_text().splitlines()[:4]]
    for row in rows:
        row["wav"] = str(tts / row["wav"])
    manifest = tmp_path / "valid.jsonl"
    manifest.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    dataset, _ = build_dataset([str(manifest)], processor, DataConfig(cache_dir=str(tmp_path / "cache")))
    assert list(dataset["key"]) == [row["key"] for row in rows]
    decoded = transcribe_featurized(model, processor, dataset, batch_size=1, max_new_tokens=10)
    assert all(isinstance(row, Decoded) for row in decoded)
    assert [row.text for row in decoded] == transcribe(
        model, processor, [row["wav"] for row in rows], batch_size=1, max_new_tokens=10
    )
    # batched (left-padded prompts, in row order): the same texts as one by one
    assert transcribe_featurized(model, processor, dataset, batch_size=3, max_new_tokens=10) == decoded


class _ScriptedModel:
    """`generate` returns the prompt followed by scripted ids (eos 2, pad 0)."""

    device = torch.device("cpu")
    generation_config = SimpleNamespace(eos_token_id=[2])

    def __init__(self, outputs: list[list[int]]):
        self.outputs = torch.tensor(outputs)
        self.calls: list[dict] = []

    def generate(self, input_ids, max_new_tokens, **kwargs):
        self.calls.append({"max_new_tokens": max_new_tokens, **kwargs})
        return torch.cat([input_ids, self.outputs], dim=1)


def test_decode_batches_strips_the_prompt_and_flags_bad_decodes():
    processor = SimpleNamespace(
        tokenizer=SimpleNamespace(pad_token_id=0),
        batch_decode_transcripts=lambda ids: [" ".join(map(str, row)) for row in ids.tolist()],
    )
    model = _ScriptedModel([[5, 6, 2, 0], [7, 8, 9, 10], [3, 3, 3, 3]])
    batch = GenerationBatch({"input_ids": torch.ones(3, 2, dtype=torch.long)}, max_new_tokens=4)
    (decoded,) = decode_batches(model, processor, [batch])
    assert decoded == [
        Decoded("5 6 2 0", hit_limit=False, repeated=False),  # stopped by eos
        Decoded("7 8 9 10", hit_limit=True, repeated=False),  # cut by the cap
        Decoded("3 3 3 3", hit_limit=True, repeated=True),  # a decode loop
    ]
    assert model.calls == [{"max_new_tokens": 4, "do_sample": False}]  # greedy unless asked otherwise


def test_default_caps_are_per_clip_so_batching_does_not_change_results(tiny_model, shared_dir):
    """Without max_new_tokens each clip gets its own duration-scaled cap, also inside a batch with longer clips
    (the tiny random model never stops by itself, so every output runs to its cap)."""
    model, processor = tiny_model
    real = shared_dir / "data" / "real"
    arrays = [sf.read(str(real / "sample.wav"), dtype="float32")[0][: 16000 * n // 2] for n in (1, 2, 4)]
    one_by_one = transcribe_detailed(model, processor, arrays, batch_size=1)
    assert transcribe_detailed(model, processor, arrays, batch_size=3) == one_by_one
    assert all(row["hit_limit"] for row in one_by_one)
    lengths = [len(processor.tokenizer.encode(row["text"])) for row in one_by_one]
    assert lengths[0] < lengths[1] < lengths[2]
