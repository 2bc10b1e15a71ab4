"""FunASR's own implementation, driven step by step on the same inputs as ours.

Used by the parity tests and the benchmarks: it loads an original folder with `funasr.AutoModel`
(exactly as FunASR users do) and exposes each stage — features, encoder, adaptor, prompt ids,
teacher-forced logits, greedy ids — through FunASR's own methods, not re-implementations.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..models import prompting


class FunASRReference:
    """A FunASR `FunASRNano` in eval mode, fp32, frontend dither 0 (deterministic)."""

    def __init__(self, model_dir: str | Path, *, llm_fp32: bool = True):
        from funasr import AutoModel

        self.auto = AutoModel(model=str(model_dir), device="cpu", disable_update=True, hub="ms", disable_pbar=True)
        self.model = self.auto.model.eval()
        self.kwargs: dict[str, Any] = self.auto.kwargs
        self.frontend = self.kwargs["frontend"]
        self.frontend.dither = 0.0
        self.tokenizer = self.kwargs["tokenizer"]
        if llm_fp32:
            # FunASR's first inference call runs with the build-time bf16 LLM (audio embeddings rounded to
            # bf16); every later call casts the LLM to fp32. Tests compare against the steady state.
            self.model.llm.float()

    def _messages(self, audio: str, instruction: str, target: str = "null") -> list[dict[str, str]]:
        return [
            {"role": "system", "content": prompting.DEFAULT_SYSTEM_PROMPT},
            {"role": "user", "content": f"{instruction}<|startofspeech|>!{audio}<|endofspeech|>"},
            {"role": "assistant", "content": target},
        ]

    @torch.no_grad()
    def features(self, waveform: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        from funasr.utils.load_utils import extract_fbank

        return extract_fbank(waveform, data_type="sound", frontend=self.frontend, is_final=True)

    @torch.no_grad()
    def encode(self, feats: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(encoder output, adaptor output) — the encoder scales its input in place, so pass a copy."""
        encoder_out, encoder_lens = self.model.encode(feats.clone(), lengths)
        adaptor_out, _ = self.model.audio_adaptor(encoder_out, encoder_lens)
        return encoder_out, adaptor_out

    @torch.no_grad()
    def prepare(self, audio: str, instruction: str, target: str = "null", teacherforcing: bool = False):
        """FunASR's `inference_prepare`: (inputs_embeds, batch dict with input_ids/labels/fbank_beg/...)."""
        kwargs = {**self.kwargs, "device": "cpu", "teacherforcing": teacherforcing}
        kwargs.pop("tokenizer", None)
        kwargs.pop("frontend", None)
        embeds, _, batch, source_ids, meta = self.model.inference_prepare(
            [self._messages(audio, instruction, target)], tokenizer=self.tokenizer, frontend=self.frontend, **kwargs
        )
        return embeds, batch, source_ids, meta

    @torch.no_grad()
    def teacher_forced(self, audio: str, instruction: str, target: str) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """Logits and loss of a training example, FunASR's embedding insertion + its LLM."""
        embeds, batch, _, _ = self.prepare(audio, instruction, target, teacherforcing=True)
        labels = batch["labels_ids"].clone()
        labels = labels[None] if labels.ndim == 1 else labels
        labels[labels == -1] = -100
        out = self.model.llm(inputs_embeds=embeds.float(), attention_mask=batch["attention_mask"], labels=labels)
        return out.logits, out.loss, batch

    @torch.no_grad()
    def greedy(self, audio: str, instruction: str, max_new_tokens: int) -> list[int]:
        """Greedy ids as `FunASRNano.inference_llm` produces them (single clip)."""
        embeds, _, source_ids, _ = self.prepare(audio, instruction)
        llm = self.model.llm
        ids = llm.generate(
            inputs_embeds=embeds.float(),
            attention_mask=torch.ones(source_ids.shape, dtype=torch.long),
            max_new_tokens=max_new_tokens,
            pad_token_id=llm.config.pad_token_id or llm.config.eos_token_id,
            do_sample=False,
        )
        return ids[0].tolist()

    def transcribe(self, audio_paths: list[str], **kwargs) -> list[str]:
        """FunASR's public inference (`AutoModel.generate`), one clip at a time."""
        results = []
        for path in audio_paths:
            out = self.auto.generate(input=[path], batch_size=1, **kwargs)
            results.append(out[0]["text"])
        return results
