"""`transformers.pipeline("automatic-speech-recognition", ...)` for Fun-ASR-Nano.

transformers' `AutomaticSpeechRecognitionPipeline` picks its decoding by model type (CTC, seq2seq encoder-decoder,
Whisper, transducers); an audio-LLM that needs a chat prompt around the audio is none of them (it fails with
``KeyError: 'input_ids'``). transformers resolves the pipeline class from the task alone, before it loads the
model, so a class registered for our model type cannot be reached; instead `import funasr_nano_hf` puts
`FunAsrNanoAsrPipeline` in the task's registry entry, and it routes: for any other model it constructs transformers'
own `AutomaticSpeechRecognitionPipeline` unchanged (``__new__`` returns that instance), for ours it decodes with
FunASR's prompt through the same functions as `transcribe` (`waveform_batches` + `decode_batches`), so the
texts are the same:

* inputs as transformers takes them: a 1-D array (16 kHz), a file path (read by `data.audio.load_audio`, any
  rate, resampled), bytes (ffmpeg, as transformers), ``{"raw"|"array": ..., "sampling_rate": ...}`` (resampled),
  a torch tensor; lists, with ``batch_size=``;
* ``generate_kwargs`` (or plain keyword arguments): ``language``, ``hotwords``, ``itn`` build FunASR's prompt;
  ``max_new_tokens`` and other `generate` options reach `generate`; the default cap scales with each clip;
* long inputs go through `segmentation` (``segmentation=SegmentationConfig(...)``), as in `transcribe`;
  ``return_timestamps=True`` returns the segments as ``chunks`` (``{"text", "timestamp": (start, end)}``).

With model objects, pass ``tokenizer=processor.tokenizer, feature_extractor=processor.feature_extractor`` (and
optionally ``processor=processor``), as transformers' `pipeline` requires for any ASR model object; from a folder
it loads them itself. ``dtype`` (e.g. ``"bfloat16"``) casts the LLM only: the audio path stays fp32.

``chunk_length_s`` (transformers' fixed-window chunking) is refused: it would cut words; long audio is cut at
pauses instead. Stock transformers without `import funasr_nano_hf` still refuses our folders (unknown model type).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from transformers.pipelines import PIPELINE_REGISTRY
from transformers.pipelines.automatic_speech_recognition import AutomaticSpeechRecognitionPipeline, _to_mono

from .segmentation import SegmentationConfig, join_texts
from .transcribe import decode_batches, segment_clips, waveform_batches

TASK = "automatic-speech-recognition"
PROMPT_OPTIONS = ("language", "hotwords", "itn")


def is_funasr_nano(model: Any) -> bool:
    """Our model, or a peft model wrapping it."""
    config = getattr(model, "config", None)
    return getattr(config, "model_type", None) == "funasr_nano_hf"


class FunAsrNanoAsrPipeline(AutomaticSpeechRecognitionPipeline):
    """The ASR pipeline for Fun-ASR-Nano (see the module docstring); any other model gets transformers' own."""

    _default_generation_config = None  # greedy with a cap scaled to each clip, as `transcribe`

    def __new__(cls, *args: Any, **kwargs: Any):
        model = kwargs.get("model", args[0] if args else None)
        if cls is FunAsrNanoAsrPipeline and not is_funasr_nano(model):
            return AutomaticSpeechRecognitionPipeline(*args, **kwargs)
        return super().__new__(cls)

    def __init__(
        self,
        model: Any,
        feature_extractor: Any = None,
        tokenizer: Any = None,
        decoder: Any = None,
        device: Any = None,
        processor: Any = None,
        segmentation: SegmentationConfig | None = None,
        **kwargs: Any,
    ) -> None:
        from ..models.processing_funasr_nano import FunAsrNanoHfProcessor

        if processor is None:
            if feature_extractor is None or tokenizer is None:
                raise ValueError("Fun-ASR-Nano's pipeline needs processor=, or both feature_extractor= and tokenizer=")
            processor = FunAsrNanoHfProcessor(
                feature_extractor, tokenizer, audio_token_rule=model.config.audio_token_rule
            )
        self.segmentation = segmentation or SegmentationConfig()
        super().__init__(
            model,
            feature_extractor=feature_extractor or processor.feature_extractor,
            tokenizer=tokenizer or processor.tokenizer,
            device=device,
            processor=processor,
            **kwargs,
        )
        self.type = "funasr_nano"

    def _sanitize_parameters(
        self,
        return_timestamps: bool | None = None,
        segmentation: SegmentationConfig | None = None,
        generate_kwargs: dict[str, Any] | None = None,
        chunk_length_s: float | None = None,
        stride_length_s: float | None = None,
        **kwargs: Any,
    ) -> tuple[dict, dict, dict]:
        if chunk_length_s or stride_length_s:
            raise ValueError(
                "chunk_length_s/stride_length_s: Fun-ASR-Nano cuts long audio at pauses itself; drop them "
                "(pass segmentation=SegmentationConfig(max_segment_s=...) to change the span)"
            )
        kwargs.pop("ignore_warning", None)
        forward = {**getattr(self, "_generate_kwargs", {}), **(generate_kwargs or {}), **kwargs}
        preprocess = {} if segmentation is None else {"segmentation": segmentation}
        postprocess = {} if return_timestamps is None else {"return_timestamps": bool(return_timestamps)}
        return preprocess, forward, postprocess

    def _waveform(self, inputs: Any) -> tuple[np.ndarray, str]:
        """16 kHz mono float32 and a name for messages, from any input transformers' ASR pipeline takes."""
        rate = self.feature_extractor.sampling_rate
        if isinstance(inputs, str):
            from ..data.audio import load_audio

            return load_audio(inputs, target_sr=rate)[0], inputs
        if isinstance(inputs, bytes):
            from transformers.pipelines.audio_utils import ffmpeg_read

            return ffmpeg_read(inputs, rate), "bytes input"
        source_rate = rate
        if isinstance(inputs, dict):
            if "sampling_rate" not in inputs or not ("raw" in inputs or "array" in inputs):
                raise ValueError(
                    'a dict input needs "raw" (or "array", as datasets writes it) and "sampling_rate" keys, '
                    f"got {sorted(inputs)}"
                )
            source_rate = int(inputs["sampling_rate"])
            inputs = inputs["raw"] if "raw" in inputs else inputs["array"]
        if isinstance(inputs, torch.Tensor):
            inputs = inputs.detach().cpu().float().numpy()
        if not isinstance(inputs, np.ndarray):
            raise TypeError(f"expected a path, bytes, a dict, a numpy array or a torch tensor, got {type(inputs)}")
        waveform = np.asarray(_to_mono(inputs), dtype=np.float32)
        if source_rate != rate:
            import torchaudio

            waveform = torchaudio.functional.resample(torch.from_numpy(waveform), source_rate, rate).numpy()
        return waveform, "array input"

    def preprocess(self, inputs: Any, segmentation: SegmentationConfig | None = None, **_: Any):
        waveform, name = self._waveform(inputs)
        (segments,) = segment_clips(
            self.processor, self.model.config, [waveform], segmentation or self.segmentation, [name]
        )
        rate = self.feature_extractor.sampling_rate
        whole = len(segments) == 1 and segments[0].start == 0 and segments[0].end == len(waveform)
        if not segments:  # nothing but silence: one empty item, so the input still gets its (empty) result
            yield {"waveform": np.zeros(0, np.float32), "timestamp": (0.0, 0.0), "whole": False, "is_last": True}
        for index, segment in enumerate(segments):
            yield {
                "waveform": waveform[segment.start : segment.end],
                "timestamp": segment.seconds(rate),
                "whole": whole,
                "is_last": index == len(segments) - 1,
            }

    def _forward(self, model_inputs: dict[str, Any], **generate_kwargs: Any) -> dict[str, Any]:
        batched = isinstance(model_inputs["waveform"], list)
        waves = model_inputs["waveform"] if batched else [model_inputs["waveform"]]
        options = {key: generate_kwargs.pop(key) for key in PROMPT_OPTIONS if key in generate_kwargs}
        if isinstance(options.get("hotwords"), str):
            options["hotwords"] = [word for word in options["hotwords"].split(",") if word]
        generate_kwargs.pop("return_timestamps", None)
        voiced = [i for i, wave in enumerate(waves) if len(wave)]
        texts, hit_limit, repeated = [""] * len(waves), [False] * len(waves), [False] * len(waves)
        if voiced:
            batches = waveform_batches(
                self.processor, waves, [voiced], max_new_tokens=generate_kwargs.pop("max_new_tokens", None), **options
            )
            (rows,) = decode_batches(self.model, self.processor, batches, **generate_kwargs)
            for index, row in zip(voiced, rows):
                texts[index], hit_limit[index], repeated[index] = row.text, row.hit_limit, row.repeated
        out = {
            "text": texts,
            "timestamp": model_inputs["timestamp"],
            "whole": model_inputs["whole"],
            "hit_limit": hit_limit,
            "repeated": repeated,
            "is_last": model_inputs["is_last"],
        }
        return (
            out
            if batched
            else {key: value[0] if key in ("text", "hit_limit", "repeated") else value for key, value in out.items()}
        )

    def postprocess(self, model_outputs: list[dict[str, Any]], return_timestamps: bool = False) -> dict[str, Any]:
        texts = [output["text"] for output in model_outputs]
        whole = len(model_outputs) == 1 and model_outputs[0]["whole"]
        result: dict[str, Any] = {"text": texts[0] if whole else join_texts(texts)}
        if return_timestamps:
            result["chunks"] = [
                {"text": output["text"], "timestamp": tuple(output["timestamp"])}
                for output in model_outputs
                if output["timestamp"][1] > output["timestamp"][0]
            ]
        return result


def register() -> None:
    """Route the task's pipeline class through `FunAsrNanoAsrPipeline` (other models are unaffected)."""
    PIPELINE_REGISTRY.supported_tasks[TASK]["impl"] = FunAsrNanoAsrPipeline


register()

__all__ = ["FunAsrNanoAsrPipeline", "is_funasr_nano", "register"]
