"""The processor's doors: audio-only calls get FunASR's default prompt; `apply_transcription_request` (the
structured chat template converted folders ship) gives exactly FunASR's prompt ids."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from funasr_nano_hf import save_hf_folder
from funasr_nano_hf.models import FunAsrNanoHfProcessor, prompting
from funasr_nano_hf.models.processing_funasr_nano import TRANSCRIPTION_CHAT_TEMPLATE

OPTIONS = [
    {},
    {"language": "zh"},
    {"language": "英文", "itn": False},
    {"hotwords": ["滨海新区", "房子"], "language": "en"},
    {"hotwords": ["a"], "itn": False},
]


def _wav(path) -> np.ndarray:
    return sf.read(str(path), dtype="float32")[0]


def _same(a, b) -> bool:
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_audio_only_call_uses_the_default_prompt(tiny_model, sample_wav):
    _, processor = tiny_model
    clip = _wav(sample_wav)
    assert _same(processor(audio=clip, sampling_rate=16000), processor.prepare_transcription([clip]))
    clips = [clip, clip[:16000]]  # a batch: left-padded prompts, as generation needs
    batch = processor(audio=clips, sampling_rate=16000)
    assert _same(batch, processor.prepare_transcription(clips))
    assert batch["attention_mask"][1, 0] == 0 and batch["attention_mask"][1, -1] == 1


@pytest.mark.parametrize("options", OPTIONS)
def test_transcription_request_is_the_prompt_transcribe_uses(tiny_model, sample_wav, options):
    _, processor = tiny_model
    clip = _wav(sample_wav)
    prompts = processor.apply_transcription_request(clip, tokenize=False, **options)
    assert prompts == [
        processor.transcription_prompt(options.get("language"), options.get("hotwords"), options.get("itn", True))
    ]
    clips = [clip, clip[:24000]]
    request = processor.apply_transcription_request(clips, **options)
    assert _same(request, processor.prepare_transcription(clips, **options))


@pytest.mark.parametrize("options", OPTIONS[:1] + OPTIONS[2:4])
def test_transcription_request_ids_are_funasr_ids(tiny_model, tiny_reference, sample_wav, options):
    """FunASR's own prompt building (`get_prompt` + `inference_prepare`) on the same clip: same ids, the audio
    placeholder run where FunASR puts its audio (``fbank_beg``), as long as its ``fake_token_len``."""
    _, processor = tiny_model
    # FunASR's get_prompt takes the checkpoint's language name ("英文") and a hotword list
    language = prompting.language_name(options.get("language"))
    instruction = tiny_reference.model.get_prompt(options.get("hotwords", []), language, options.get("itn", True))
    _, batch, source_ids, _ = tiny_reference.prepare(str(sample_wav), instruction)
    ours = processor.apply_transcription_request(_wav(sample_wav), **options)["input_ids"][0]
    ref = torch.as_tensor(source_ids).flatten()  # the prompt FunASR generates from
    audio = ours == processor.audio_token_id
    assert ours.shape == ref.shape
    assert int(audio.sum()) == int(batch["fake_token_len"][0, 0])
    assert int(audio.nonzero()[0]) == int(batch["fbank_beg"][0, 0])
    assert torch.equal(ours[~audio], ref[~audio])


def test_converted_folder_ships_the_structured_template(tiny_model, tmp_path):
    model, processor = tiny_model
    assert processor.chat_template == TRANSCRIPTION_CHAT_TEMPLATE
    folder = save_hf_folder(model, processor, tmp_path / "hf")
    reloaded = FunAsrNanoHfProcessor.from_pretrained(str(folder))
    assert reloaded.chat_template == TRANSCRIPTION_CHAT_TEMPLATE
    conversation = [
        {"role": "user", "content": [{"type": "keywords", "keywords": ["x"]}, {"type": "audio", "path": "a.wav"}]}
    ]
    text = reloaded.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    assert text == processor.transcription_prompt(hotwords=["x"])
    # plain string contents stay Qwen's ChatML (FunASR's system turn added when absent)
    plain = reloaded.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert plain == "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"


def test_bad_requests_name_the_option(tiny_model, sample_wav):
    _, processor = tiny_model
    clip = _wav(sample_wav)
    with pytest.raises(ValueError, match="hotwords or keywords"):
        processor.apply_transcription_request(clip, hotwords=["a"], keywords=["b"])
    with pytest.raises(ValueError, match="language: got 3 values for 2 clips"):
        processor.apply_transcription_request([clip, clip], language=["zh", "en", "ja"])
