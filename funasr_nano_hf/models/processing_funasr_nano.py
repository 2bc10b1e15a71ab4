"""Processor: FunASR's prompt, FunASR's audio-token count, left padding for batched generation.

The stock `FunAsrNanoProcessor` expands the audio placeholder to ALL T_lfr frames; FunASR (and the
released model's training) uses ceil(T_lfr / 8) tokens (`use_low_frame_rate`). This subclass changes
only that count and adds the FunASR prompt builders.
"""

from __future__ import annotations

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
        super().__init__(feature_extractor, tokenizer, chat_template=chat_template, audio_token=audio_token)
        if self.audio_token_id is None or self.audio_token_id == tokenizer.unk_token_id:
            raise ValueError(f"audio token {audio_token!r} is not in the tokenizer's vocabulary")

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

__all__ = ["FunAsrNanoHfProcessor", "audio_token_count", "low_frame_rate_token_count"]
