"""FunASR's `WavFrontend` on top of transformers' Fun-ASR-Nano feature extractor.

Two differences from the stock extractor, both pinned by tests:
- FunASR scales the [-1, 1] waveform by 32768 before Kaldi fbank (`upsacle_samples=True`); without it
  every log-mel moves by ~2*ln(32768) = 20.8.
- FunASR's frame length is `min(25 ms, clip length)`, so clips shorter than one window still give a frame.
`dither` defaults to 0 (deterministic, as FunASR's llama.cpp runtime); FunASR's own `WavFrontend`
default is 1.0, which a training run can ask for as augmentation.
"""

from __future__ import annotations

from typing import Any

import torch
import torchaudio
from transformers.models.fun_asr_nano.feature_extraction_fun_asr_nano import FunAsrNanoFeatureExtractor

# FunASR's `upsacle_samples`: the [-1, 1] waveform as 16-bit sample values.
WAVEFORM_SCALE = 32768.0


class FunAsrNanoHfFeatureExtractor(FunAsrNanoFeatureExtractor):
    r"""
    transformers' Fun-ASR-Nano feature extractor giving FunASR's features bit for bit (see the module docstring).

    Args:
        dither (`float`, defaults to 0.0): Kaldi dither; FunASR's frontend default is 1.0 (random features).
        upscale_samples (`bool`, defaults to True): multiply the waveform by 32768 as FunASR does.
        (other arguments as `FunAsrNanoFeatureExtractor`)
    """

    def __init__(self, *args: Any, dither: float = 0.0, upscale_samples: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.dither = dither
        self.upscale_samples = upscale_samples

    def _extract_fbank_features(self, waveform: torch.Tensor) -> torch.Tensor:
        if waveform.ndim != 1:
            raise ValueError(f"expected a mono 1-D waveform, got shape {tuple(waveform.shape)}")
        if waveform.numel() == 0:
            raise ValueError("cannot extract features from an empty waveform")
        if self.upscale_samples:
            waveform = waveform * WAVEFORM_SCALE
        clip_ms = waveform.numel() / self.sampling_rate * 1000.0
        return torchaudio.compliance.kaldi.fbank(
            waveform.unsqueeze(0),
            num_mel_bins=self.feature_size,
            frame_length=min(float(self.frame_length), clip_ms),
            frame_shift=self.frame_shift,
            dither=self.dither,
            energy_floor=0.0,
            window_type=self.window,
            sample_frequency=self.sampling_rate,
            snip_edges=True,
        )


__all__ = ["FunAsrNanoHfFeatureExtractor"]
