"""Training-time augmentation of features computed on the fly: FunASR's fbank dither, seeded per example.

FunASR's Fun-ASR-Nano recipe augments with exactly one thing: its `WavFrontend` dithers the fbank with
`dither=1.0` (the model's `frontend_conf` sets none, so the frontend default applies, to training and validation
features alike). `FunASRNano.forward` applies no SpecAugment (the model has no `specaug`), and its dataset has no
speed perturbation unless a `preprocessor_speech` is configured (the recipe configures none). So the default here
is dither 1.0 in training, nothing else; evaluation features are always clean (deterministic CER).

Dither is Kaldi's (`torchaudio.compliance.kaldi.fbank(dither=...)`), which draws from torch's global generator:
each example's draw is made under `torch.random.fork_rng` seeded from (seed, epoch, example index), so a
resumed run, any number of loader workers and any batch order give the same features.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

FUNASR_DITHER = 1.0  # WavFrontend's default, which FunASR's Nano recipe trains with


def example_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed that is a pure function of (run seed, epoch, example index)."""
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(epoch), int(index)]).generate_state(1, np.uint64)
    return int(state[0]) >> 1


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """torch's global CPU generator seeded with `seed` inside, restored after (Kaldi dither draws from it)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


@dataclass(frozen=True)
class Augmentation:
    """What a training example's features get; `seed` is the run's seed (`--seed` / `--data_seed`)."""

    dither: float = 0.0
    seed: int = 0

    @property
    def active(self) -> bool:
        return self.dither > 0

    def extractor(self, extractor: Any) -> Any:
        """A copy of `extractor` that dithers (the caller's stays clean, e.g. for evaluation)."""
        if not self.active:
            return extractor
        noisy = copy.copy(extractor)
        noisy.dither = float(self.dither)
        return noisy
