"""`transformers.pipeline("automatic-speech-recognition")` after `import funasr_nano_hf`: a converted folder or
(model, processor) objects; arrays, paths, dicts, lists, batches, generate_kwargs; same texts as `transcribe`;
long inputs segmented as in `transcribe`; other models keep transformers' own pipeline."""

from __future__ import annotations

import glob
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio
from transformers import AutomaticSpeechRecognitionPipeline, pipeline

import funasr_nano_hf  # noqa: F401  (registers the pipeline route)
from funasr_nano_hf import save_hf_folder, transcribe
from funasr_nano_hf.inference import SegmentationConfig, transcribe_detailed
from funasr_nano_hf.inference.pipeline import FunAsrNanoAsrPipeline

CAP = {"max_new_tokens": 8}  # the tiny random model never says <|im_end|>: a fixed cap keeps runs short


@pytest.fixture(scope="module")
def converted(tiny_model, tmp_path_factory):
    model, processor = tiny_model
    return save_hf_folder(model, processor, tmp_path_factory.mktemp("converted"))


@pytest.fixture(scope="module")
def clips(shared_dir) -> list[str]:
    return sorted(glob.glob(str(shared_dir / "data" / "tts" / "wav" / "valid" / "*.wav")))[:3]


def test_folder_pipeline_equals_transcribe_on_every_input_form(converted, tiny_model, clips):
    model, processor = tiny_model
    asr = pipeline("automatic-speech-recognition", model=str(converted))
    assert isinstance(asr, FunAsrNanoAsrPipeline)
    array = sf.read(clips[0], dtype="float32")[0]
    expected = transcribe(model, processor, clips, batch_size=1, **CAP)
    assert asr(clips[0], generate_kwargs=CAP) == {"text": expected[0]}  # a path
    assert asr(array, **CAP)["text"] == expected[0]  # an array, generate kwargs given flat
    assert asr({"raw": array, "sampling_rate": 16000}, **CAP)["text"] == expected[0]
    assert asr({"array": torch.from_numpy(array), "sampling_rate": 16000}, **CAP)["text"] == expected[0]
    # another rate: resampled as transformers resamples (torchaudio)
    slow = torchaudio.functional.resample(torch.from_numpy(array), 16000, 8000).numpy()
    back = torchaudio.functional.resample(torch.from_numpy(slow), 8000, 16000).numpy()
    assert asr({"array": slow, "sampling_rate": 8000}, **CAP)["text"] == transcribe(model, processor, back, **CAP)[0]
    # a list, batched: same texts, in input order
    assert [r["text"] for r in asr(clips, batch_size=2, generate_kwargs=CAP)] == expected
    assert [r["text"] for r in asr(clips[::-1], batch_size=3, generate_kwargs=CAP)] == expected[::-1]


def test_prompt_options_and_objects(tiny_model, clips):
    model, processor = tiny_model
    asr = pipeline(
        "automatic-speech-recognition",
        model=model,
        tokenizer=processor.tokenizer,
        feature_extractor=processor.feature_extractor,
        processor=processor,
    )
    options = {"language": "zh", "hotwords": ["滨海新区"], "itn": False}
    got = asr(clips[:2], batch_size=2, generate_kwargs={**options, "max_new_tokens": 6})
    assert [r["text"] for r in got] == transcribe(model, processor, clips[:2], max_new_tokens=6, **options)
    # the options change the prompt, hence the text; the cap reaches generate
    assert got[0]["text"] != asr(clips[0], max_new_tokens=6)["text"]
    assert len(processor.tokenizer.encode(asr(clips[0], max_new_tokens=2)["text"])) <= 3


def test_long_input_is_segmented_like_transcribe(tiny_model, clips):
    model, processor = tiny_model
    asr = pipeline(
        "automatic-speech-recognition",
        model=model,
        tokenizer=processor.tokenizer,
        feature_extractor=processor.feature_extractor,
    )
    pause = np.zeros(16000, np.float32)
    recording = np.concatenate([pause, *(x for c in clips for x in (sf.read(c, dtype="float32")[0], pause))])
    config = SegmentationConfig(max_segment_s=3)
    (expected,) = transcribe_detailed(model, processor, [recording], segmentation=config, **CAP)
    assert len(expected["segments"]) == len(clips)
    got = asr([recording], segmentation=config, return_timestamps=True, batch_size=2, generate_kwargs=CAP)[0]
    assert got["text"] == expected["text"]
    assert got["chunks"] == [{"text": s["text"], "timestamp": (s["start"], s["end"])} for s in expected["segments"]]
    with pytest.raises(ValueError, match="chunk_length_s"):
        asr(recording, chunk_length_s=10)


def test_other_models_get_transformers_pipeline(tmp_path):
    """The route is ours only for our model type: a CTC model builds transformers' own pipeline and runs."""
    import json

    from transformers import Wav2Vec2Config, Wav2Vec2CTCTokenizer, Wav2Vec2FeatureExtractor, Wav2Vec2ForCTC

    vocab = tmp_path / "vocab.json"
    vocab.write_text(json.dumps({"<pad>": 0, "<unk>": 1, "|": 2, "a": 3, "b": 4}))
    tokenizer = Wav2Vec2CTCTokenizer(str(vocab))
    config = Wav2Vec2Config(
        vocab_size=5,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        conv_dim=(16, 16),
        conv_stride=(5, 4),
        conv_kernel=(10, 8),
        num_conv_pos_embeddings=4,
        num_conv_pos_embedding_groups=2,
    )
    asr = pipeline(
        "automatic-speech-recognition",
        model=Wav2Vec2ForCTC(config).eval(),
        tokenizer=tokenizer,
        feature_extractor=Wav2Vec2FeatureExtractor(),
    )
    assert type(asr) is AutomaticSpeechRecognitionPipeline and asr.type == "ctc"
    assert isinstance(asr(np.zeros(16000, np.float32))["text"], str)


def test_stock_transformers_refuses_our_folder(converted):
    code = f"from transformers import pipeline\npipeline('automatic-speech-recognition', model={str(converted)!r})\n"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and "funasr_nano_hf" in result.stderr
