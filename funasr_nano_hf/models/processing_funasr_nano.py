"""Processor: FunASR's prompt, FunASR's audio-token count, left padding for batched generation.

The stock `FunAsrNanoProcessor` expands the audio placeholder to ALL T_lfr frames; FunASR (and the
released model's training) uses ceil(T_lfr / 8) tokens (`use_low_frame_rate`). This subclass changes
only that count and adds the FunASR prompt builders.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from transformers import AutoFeatureExtractor, AutoProcessor, BatchFeature
from transformers.models.fun_asr_nano.processing_fun_asr_nano import FunAsrNanoProcessor

from . import prompting
from .configuration_funasr_nano import AUDIO_TOKEN_RULES, FunAsrNanoHfConfig
from .feature_extraction_funasr_nano import FunAsrNanoHfFeatureExtractor


def low_frame_rate_token_count(num_frames: torch.Tensor | int) -> torch.Tensor | int:
    """FunASR's `fake_token_len`: three stride-2 reductions (kernel 3, pad 1) of the LFR frame count.

    Equal to ceil(T / 8) for T >= 1; written as FunASR writes it so the two cannot drift apart.
    """
    count = 1 + (num_frames - 1) // 2
    count = 1 + (count - 1) // 2
    return (count - 1) // 2 + 1


def audio_token_count(num_frames: torch.Tensor | int, rule: str) -> torch.Tensor | int:
    """Audio tokens the LLM sees for `num_frames` LFR frames under `rule` (`AUDIO_TOKEN_RULES`)."""
    if rule == "low_frame_rate":
        return low_frame_rate_token_count(num_frames)
    if rule == "all_frames":
        return num_frames
    raise ValueError(f"audio_token_rule must be one of {AUDIO_TOKEN_RULES}, got {rule!r}")


def _transcription_chat_template() -> str:
    """A structured chat template giving FunASR's prompt (`prompting.chatml_prompt` of `prompting.instruction`).

    A user turn's content list may hold ``{"type": "audio"}`` (one placeholder each), ``{"type": "keywords",
    "keywords": [...]}`` (hotwords), ``{"type": "language", "language": "zh" | "中文" | ...}``, ``{"type": "itn",
    "itn": false}`` and ``{"type": "text", "text": ...}`` (replaces the instruction, as a ChatML manifest's own
    instruction does); string contents pass through (Qwen's plain ChatML). FunASR's system turn is added when
    the conversation has none.
    """

    def literal(text: str) -> str:
        return "'" + text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"

    names = ", ".join(f"{literal(code)}: {literal(name)}" for code, name in prompting.LANGUAGE_NAMES.items())
    return (
        "{%- set names = {" + names + "} -%}"
        "{%- set ns = namespace(system=false) -%}"
        "{%- for message in messages -%}{%- if message.role == 'system' -%}{%- set ns.system = true -%}"
        "{%- endif -%}{%- endfor -%}"
        "{%- if not ns.system -%}{{ "
        + literal(f"<|im_start|>system\n{prompting.DEFAULT_SYSTEM_PROMPT}<|im_end|>\n")
        + " }}{%- endif -%}"
        "{%- for message in messages -%}"
        "{{ '<|im_start|>' + message.role + '\\n' }}"
        "{%- if message.content is string -%}{{ message.content }}"
        "{%- else -%}"
        "{%- set p = namespace(text=none, keywords=[], language=none, itn=true, audio=0) -%}"
        "{%- for item in message.content -%}"
        "{%- if item.type == 'text' -%}{%- set p.text = item.text -%}"
        "{%- elif item.type == 'keywords' -%}{%- set p.keywords = item.keywords -%}"
        "{%- elif item.type == 'language' -%}{%- set p.language = item.language -%}"
        "{%- elif item.type == 'itn' -%}{%- set p.itn = item.itn -%}"
        "{%- elif item.type == 'audio' -%}{%- set p.audio = p.audio + 1 -%}"
        "{%- endif -%}"
        "{%- endfor -%}"
        "{%- if p.text is not none -%}{{ p.text }}"
        "{%- elif p.audio > 0 -%}"
        "{%- if p.keywords -%}{{ "
        + literal(prompting.HOTWORD_HEADER + "热词列表：[")
        + " + (p.keywords | join(', ')) + ']\\n' }}{%- endif -%}"
        "{{ '语音转写' }}"
        "{%- if p.language -%}{{ '成' + names.get(p.language | trim | lower, p.language | trim) }}{%- endif -%}"
        "{%- if not p.itn -%}{{ " + literal(prompting.NO_ITN_SUFFIX) + " }}{%- endif -%}"
        "{{ '：' }}"
        "{%- endif -%}"
        "{{ '" + "<|object_ref_start|>" + "' * p.audio }}"
        "{%- endif -%}"
        "{{ '<|im_end|>\\n' }}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
    )


TRANSCRIPTION_CHAT_TEMPLATE = _transcription_chat_template()


class FunAsrNanoHfProcessor(FunAsrNanoProcessor):
    """Feature extractor + Qwen3 tokenizer, with FunASR's audio-token count and prompts.

    Differs from the stock processor only where FunASR differs: the audio placeholder expands to
    `audio_token_count(T_lfr, audio_token_rule)` tokens (ceil(T_lfr / 8) for the released model, not T_lfr), and
    the prompt builders (`transcription_prompt`, `prepare_transcription`, `build_training_example`) reproduce
    FunASR's ChatML text and tokenisation exactly.
    """

    def __init__(
        self,
        feature_extractor,
        tokenizer,
        chat_template: str | None = None,
        audio_token: str = "<|object_ref_start|>",
        audio_token_rule: str = "low_frame_rate",
    ):
        if audio_token_rule not in AUDIO_TOKEN_RULES:
            raise ValueError(f"audio_token_rule must be one of {AUDIO_TOKEN_RULES}, got {audio_token_rule!r}")
        self.audio_token_rule = audio_token_rule
        chat_template = TRANSCRIPTION_CHAT_TEMPLATE if chat_template is None else chat_template
        super().__init__(feature_extractor, tokenizer, chat_template=chat_template, audio_token=audio_token)
        if self.audio_token_id is None or self.audio_token_id == tokenizer.unk_token_id:
            raise ValueError(f"audio token {audio_token!r} is not in the tokenizer's vocabulary")

    def __call__(self, text=None, audio=None, output_labels: bool | None = False, **kwargs) -> BatchFeature:
        """The stock call; with audio and no text, each clip gets FunASR's default transcription prompt
        (`transcription_prompt`), left-padded for generation."""
        if text is None and audio is not None:
            count = 1 if isinstance(audio, (np.ndarray, torch.Tensor)) and audio.ndim == 1 else len(audio)
            text = [self.transcription_prompt()] * count
            kwargs.setdefault("padding", True)
            kwargs.setdefault("padding_side", "left")
        return super().__call__(text, audio, output_labels=output_labels, **kwargs)

    def apply_transcription_request(
        self,
        audio,
        language: str | list[str] | None = None,
        hotwords: Sequence[str] | list[Sequence[str]] | None = None,
        itn: bool = True,
        prompt: str | list[str] | None = None,
        keywords: Sequence[str] | list[Sequence[str]] | None = None,
        tokenize: bool = True,
        **kwargs,
    ) -> BatchFeature | list[str]:
        """FunASR's prompt for each clip through the structured chat template (`TRANSCRIPTION_CHAT_TEMPLATE`,
        used whatever template the folder shipped): ``language`` (a code or a checkpoint name), ``hotwords``
        (transformers' name ``keywords`` too; a flat list for all clips or one list per clip), ``itn`` and
        ``prompt`` (an instruction replacing FunASR's) as in `transcribe`. Batches are left-padded for
        generation. ``tokenize=False`` returns the prompt strings with one audio placeholder each."""
        from transformers.audio_utils import make_audio_chat_template_content, make_list_of_audio_chat_template

        if hotwords is not None and keywords is not None:
            raise ValueError("pass hotwords or keywords (the same thing), not both")
        hotwords = keywords if hotwords is None else hotwords
        items = list(make_list_of_audio_chat_template(audio))
        if not items:
            raise ValueError("`audio` must contain at least one clip")

        def per_clip(value, name: str, nested: bool = False) -> list:
            if (
                nested
                and value
                and all(isinstance(v, (list, tuple)) for v in value)
                or not nested
                and isinstance(value, list)
            ):
                if len(value) != len(items):
                    raise ValueError(f"{name}: got {len(value)} values for {len(items)} clips")
                return list(value)
            return [value] * len(items)

        conversations = []
        for clip, lang, words, instruction in zip(
            items,
            per_clip(language, "language"),
            per_clip(hotwords, "hotwords", nested=True),
            per_clip(prompt, "prompt"),
        ):
            content = [make_audio_chat_template_content(clip)]
            if instruction is not None:
                content.append({"type": "text", "text": instruction})
            if words:
                content.append({"type": "keywords", "keywords": list(words)})
            if lang is not None:
                content.append({"type": "language", "language": lang})
            if not itn:
                content.append({"type": "itn", "itn": False})
            conversations.append([{"role": "user", "content": content}])
        if tokenize:
            processor_kwargs = dict(kwargs.pop("processor_kwargs", None) or {})
            processor_kwargs.setdefault("padding", True)
            processor_kwargs.setdefault("padding_side", "left")
            kwargs["processor_kwargs"] = processor_kwargs
        return self.apply_chat_template(
            conversations,
            chat_template=TRANSCRIPTION_CHAT_TEMPLATE,
            tokenize=tokenize,
            add_generation_prompt=True,
            return_dict=tokenize,
            **kwargs,
        )

    # -- audio tokens --------------------------------------------------------------------------------
    def _process_audio(self, audio, **kwargs):
        audio_inputs = self.feature_extractor(audio, **kwargs)
        if "input_features_mask" not in audio_inputs:
            raise ValueError("FunAsrNanoHfProcessor requires an audio padding mask; set `return_attention_mask=True`.")
        frames = audio_inputs["input_features_mask"].sum(-1)
        audio_inputs["num_audio_tokens"] = audio_token_count(frames, self.audio_token_rule)
        replacements = [self.replace_audio_token(audio_inputs, audio_idx=i) for i in range(len(frames))]
        return audio_inputs, replacements

    # -- prompts -------------------------------------------------------------------------------------
    def transcription_prompt(
        self,
        language: str | None = None,
        hotwords: Sequence[str] | None = None,
        itn: bool = True,
        instruction: str | None = None,
    ) -> str:
        """FunASR's ChatML source with ONE audio placeholder (expanded when audio is processed).

        `instruction` replaces the user-turn text before the audio (e.g. a ChatML manifest's own instruction).
        """
        text = instruction if instruction is not None else prompting.instruction(language, hotwords, itn)
        return prompting.chatml_prompt(text, self.audio_token)

    def prepare_transcription(
        self,
        audio: Sequence[np.ndarray] | np.ndarray,
        *,
        language: str | None = None,
        hotwords: Sequence[str] | None = None,
        itn: bool = True,
        instructions: Sequence[str] | None = None,
        sampling_rate: int | None = None,
    ) -> BatchFeature:
        """Left-padded generation inputs for a batch of 16 kHz mono waveforms."""
        audio = [audio] if isinstance(audio, np.ndarray) and audio.ndim == 1 else list(audio)
        if instructions is None:
            prompts = [self.transcription_prompt(language, hotwords, itn)] * len(audio)
        else:
            if len(instructions) != len(audio):
                raise ValueError(f"got {len(instructions)} instructions for {len(audio)} clips")
            prompts = [self.transcription_prompt(instruction=text) for text in instructions]
        return self(
            text=prompts,
            audio=audio,
            text_kwargs={"padding": True, "padding_side": "left"},
            audio_kwargs={"sampling_rate": sampling_rate or self.feature_extractor.sampling_rate},
        )

    def save_pretrained(self, save_directory: str | os.PathLike, *args: Any, **kwargs: Any) -> Any:
        """As transformers saves it, without the fast tokenizer's call-time padding state: a batched call (left-
        padded prompts) leaves the backend's padding set, which `tokenizer.json` would record, and the folder
        would load with padding_side "left" next to the feature extractor's "right" (transformers' ASR pipeline
        refuses that). Padding is chosen per call anyway."""
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is not None and backend.padding is not None:
            backend.no_padding()
        return super().save_pretrained(save_directory, *args, **kwargs)

    def build_training_example(
        self, waveform: np.ndarray, transcript: str, instruction: str | None = None
    ) -> dict[str, Any]:
        """One unpadded training example exactly as FunASR's `data_load_speech` builds it.

        Prompt and target are tokenised separately (FunASR encodes `f"{text}<|im_end|>"` on its own);
        labels are -100 on the prompt and audio tokens, the target ids elsewhere.
        """
        features = self.feature_extractor(
            [waveform], sampling_rate=self.feature_extractor.sampling_rate, return_tensors="np", padding=False
        )["input_features"][0]
        return {
            "input_features": np.asarray(features, dtype=np.float32),
            **self.build_training_ids(features.shape[0], transcript, instruction),
        }

    def build_training_ids(
        self, num_lfr_frames: int, transcript: str, instruction: str | None = None
    ) -> dict[str, Any]:
        """The token side of `build_training_example` for a clip of `num_lfr_frames` feature frames: what
        training caches per example when the features are computed later (on the fly, in the loader workers)."""
        num_tokens = int(audio_token_count(int(num_lfr_frames), self.audio_token_rule))
        prompt = self.transcription_prompt(instruction=instruction or prompting.instruction())
        prompt = prompt.replace(self.audio_token, self.audio_token * num_tokens)
        source_ids = self.tokenizer.encode(prompt, add_special_tokens=False)
        # The transcript is text: a "<|im_end|>" or audio placeholder typed in it stays text (split_special_tokens),
        # never a control token; the turn's real end follows (the same ids as encoding `target_text` whole).
        target_ids = self.tokenizer.encode(transcript, add_special_tokens=False, split_special_tokens=True)
        target_ids += self.tokenizer.encode(prompting.target_text(""), add_special_tokens=False)
        return {
            "input_ids": source_ids + target_ids,
            "labels": [-100] * len(source_ids) + target_ids,
            "prompt_length": len(source_ids),
        }

    def batch_decode_transcripts(self, generated_ids: torch.Tensor) -> list[str]:
        """FunASR's post-processing of generated ids: skip special tokens, `/sil` -> space, fold spaces."""
        import re

        texts = self.tokenizer.batch_decode(generated_ids, skip_special_tokens=True)
        return [re.sub(r"\s+", " ", text.replace("/sil", " ")) for text in texts]


AutoFeatureExtractor.register(FunAsrNanoHfConfig, FunAsrNanoHfFeatureExtractor)
AutoProcessor.register(FunAsrNanoHfConfig, FunAsrNanoHfProcessor)

__all__ = ["TRANSCRIPTION_CHAT_TEMPLATE", "FunAsrNanoHfProcessor", "audio_token_count", "low_frame_rate_token_count"]
