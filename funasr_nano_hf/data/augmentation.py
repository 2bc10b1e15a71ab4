"""Training-time augmentation of features computed on the fly: dither, SpecAugment, speed perturbation.

FunASR's Fun-ASR-Nano recipe augments with exactly one thing: its `WavFrontend` dithers the fbank with
`dither=1.0` (the model's `frontend_conf` sets none, so the frontend default applies, to training and validation
features alike). `FunASRNano.forward` applies no SpecAugment (the model has no `specaug`), and its dataset has no
speed perturbation unless a `preprocessor_speech` is configured (the recipe configures none). So the default here
is dither 1.0 in training, nothing else; SpecAugment (`--specaug`) and speed perturbation (`--speed_perturb`)
exist off by default, with FunASR's semantics and option names; evaluation features are always clean.

Every draw is a pure function of (seed, epoch, example index), so a resumed run, any number of loader workers and
any batch order give the same features. Dither is Kaldi's (`torchaudio.compliance.kaldi.fbank(dither=...)`),
which draws from torch's global generator: it runs under `torch.random.fork_rng` seeded per example. The speed
factor and the SpecAugment masks come from numpy generators of their own per example (`Augmentation.rng`), one
stream each, so turning one on does not change the other's draws.

Hand-written, not FunASR's modules: `funasr` is not importable in the product. `spec_augment` is FunASR's
`SpecAugLFR` (`funasr/models/specaug/specaug.py`, `mask_along_axis.py`) for one example, vectorised in numpy;
`perturb_speed` is the effect of FunASR's `SpeechPreprocessSpeedPerturb` (sox `speed` then `rate`) done with
`torchaudio.functional.resample` (torchaudio 2.9+ has no sox effects).
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch
import torchaudio

FUNASR_DITHER = 1.0  # WavFrontend's default, which FunASR's Nano recipe trains with
# Independent per-example random streams (the torch dither stream is seeded with `example_seed` itself).
SPEED_STREAM, SPECAUG_STREAM = 1, 2


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


def _width_range(name: str, value: Any, kind: type) -> tuple[Any, Any] | None:
    """FunASR's `(low, high)` width range (an int/float `high` means `(0, high)`), high exclusive, high > low."""
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = (0, value)
    ok = isinstance(value, (list, tuple)) and len(value) == 2
    ok = ok and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    if kind is int:
        ok = ok and all(float(v).is_integer() for v in value)
    if not ok or value[0] < 0 or value[1] <= value[0]:
        raise ValueError(f"specaug_conf.{name}: a pair [low, high] with 0 <= low < high, got {value!r}")
    return (kind(value[0]), kind(value[1]))


@dataclass(frozen=True)
class SpecAugConfig:
    """FunASR's `specaug_conf` for `SpecAugLFR`, with its field names. The defaults are the `specaug_conf` of
    FunASR's LFR models that train with SpecAugment (Paraformer, SenseVoiceSmall, its LLM-ASR recipes): one
    frequency mask of width [0, 30) repeated in each of the `lfr_rate + 1` stacked frames, one time mask of
    width [0, 12) LFR frames, no time warp. Time warp is not implemented (those configs all disable it)."""

    apply_time_warp: bool = False
    apply_freq_mask: bool = True
    freq_mask_width_range: tuple[int, int] = (0, 30)
    num_freq_mask: int = 1
    lfr_rate: int = 6
    apply_time_mask: bool = True
    time_mask_width_range: tuple[int, int] | None = (0, 12)
    time_mask_width_ratio_range: tuple[float, float] | None = None
    num_time_mask: int = 1

    def __post_init__(self):
        if self.apply_time_warp:
            raise ValueError(
                "specaug_conf.apply_time_warp=true is not supported (FunASR's SpecAugLFR configs set it false): "
                'set "apply_time_warp": false'
            )
        if not self.apply_freq_mask and not self.apply_time_mask:
            raise ValueError("specaug_conf: apply_freq_mask and apply_time_mask are both false: nothing to apply")
        for name in ("num_freq_mask", "num_time_mask", "lfr_rate"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"specaug_conf.{name}: an integer >= 0, got {value!r}")
        object.__setattr__(self, "freq_mask_width_range", _width_range("freq_mask_width_range",
                                                                        self.freq_mask_width_range, int))  # fmt: skip
        ratio = _width_range("time_mask_width_ratio_range", self.time_mask_width_ratio_range, float)
        width = self.time_mask_width_range
        if ratio is not None and width == SpecAugConfig.time_mask_width_range:
            width = None  # a ratio range given alone replaces the default width range
        if self.apply_time_mask and width is not None and ratio is not None:
            raise ValueError(
                "specaug_conf: either time_mask_width_range or time_mask_width_ratio_range can be used (FunASR's rule)"
            )
        object.__setattr__(self, "time_mask_width_range", _width_range("time_mask_width_range", width, int))
        object.__setattr__(self, "time_mask_width_ratio_range", ratio)

    @classmethod
    def parse(cls, value: str | dict[str, Any] | None) -> SpecAugConfig:
        """From `--specaug_conf` (a JSON object or dict with FunASR's field names); None: the defaults."""
        if value is None or value == "":
            return cls()
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as err:
                raise ValueError(f"specaug_conf: not a JSON object ({err}): {value!r}") from None
        if not isinstance(value, dict):
            raise ValueError(f"specaug_conf: a JSON object of SpecAugLFR fields, got {value!r}")
        known = {f.name for f in fields(cls)}
        ignored = {"time_warp_window", "time_warp_mode"}  # FunASR's time-warp settings, moot without time warp
        unknown = sorted(set(value) - known - ignored)
        if unknown:
            raise ValueError(f"specaug_conf: unknown field(s) {unknown}; SpecAugLFR's are {sorted(known)}")
        return cls(**{k: v for k, v in value.items() if k in known})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _band_mask(length: int, widths: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """(length,) bool: the union of the bands [start, start + width) (FunASR's `mask_along_axis`, one row)."""
    positions = np.arange(length)[None, :]
    return ((starts[:, None] <= positions) & (positions < starts[:, None] + widths[:, None])).any(axis=0)


def _draw(rng: np.random.Generator, length: int, low: int, high: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    """FunASR's draws: widths in [low, high), starts in [0, max(1, length - widest))."""
    widths = rng.integers(low, high, size=count)
    starts = rng.integers(0, max(1, length - int(widths.max(initial=0))), size=count)
    return widths, starts


def spec_augment(features: np.ndarray, conf: SpecAugConfig, rng: np.random.Generator) -> np.ndarray:
    """FunASR's `SpecAugLFR` on one example's LFR features `(frames, (lfr_rate + 1) * mels)`, a masked copy.

    Frequency masks are drawn on the mel axis and repeated in each stacked frame (`MaskAlongAxisLFR`); time masks
    are on LFR frames (`MaskAlongAxis`, or `MaskAlongAxisVariableMaxWidth` with a ratio range: widths a fraction
    of the clip's frames). Masked values are 0 (FunASR's `replace_with_zero`). One difference: FunASR draws for a
    padded batch (start bound from the batch's length and widest mask); here each clip draws for itself.
    """
    frames, dim = features.shape
    stack = conf.lfr_rate + 1
    if dim % stack:
        raise ValueError(f"specaug_conf.lfr_rate={conf.lfr_rate}: {dim} feature dims are not {stack} stacked frames")
    out = np.array(features, copy=True)
    if conf.apply_freq_mask and conf.num_freq_mask:
        mels = dim // stack
        widths, starts = _draw(rng, mels, *conf.freq_mask_width_range, conf.num_freq_mask)
        out[:, np.tile(_band_mask(mels, widths, starts), stack)] = 0.0
    if conf.apply_time_mask and conf.num_time_mask and frames:
        if conf.time_mask_width_range is not None:
            low, high = conf.time_mask_width_range
        else:
            ratio_low, ratio_high = conf.time_mask_width_ratio_range
            low, high = max(0, math.floor(frames * ratio_low)), min(frames, math.floor(frames * ratio_high))
        if high > low:
            widths, starts = _draw(rng, frames, low, high, conf.num_time_mask)
            out[_band_mask(frames, widths, starts)] = 0.0
    return out


def parse_speed_perturb(value: str | list[float] | tuple[float, ...] | None) -> tuple[float, ...] | None:
    """`--speed_perturb 0.9,1.0,1.1` (FunASR's `speed_perturb` list) -> factors; None/"" = off."""
    if value is None or value == "" or value == []:
        return None
    parts = value.strip("[] ").split(",") if isinstance(value, str) else list(value)
    try:
        factors = tuple(float(p) for p in parts)
    except (TypeError, ValueError):
        raise ValueError(f"speed_perturb: comma-separated speed factors such as 0.9,1.0,1.1, got {value!r}") from None
    if not factors or any(not math.isfinite(f) or not 0.5 <= f <= 2.0 for f in factors):
        raise ValueError(f"speed_perturb: factors between 0.5 and 2.0 (e.g. 0.9,1.0,1.1), got {value!r}")
    return factors


def perturb_speed(waveform: np.ndarray, factor: float, sampling_rate: int) -> np.ndarray:
    """The clip played `factor` times faster (tempo and pitch, sox `speed`) at the same rate (sox `rate`):
    resampled from `factor * rate` to `rate`, so ceil(n / factor) samples."""
    if factor == 1.0:
        return waveform
    tensor = torch.as_tensor(np.ascontiguousarray(waveform), dtype=torch.float32)
    resampled = torchaudio.functional.resample(tensor, orig_freq=round(sampling_rate * factor), new_freq=sampling_rate)
    return resampled.numpy()


@dataclass(frozen=True)
class Augmentation:
    """What a training example's features get; `seed` is the run's seed (`--seed` / `--data_seed`)."""

    dither: float = 0.0
    seed: int = 0
    specaug: SpecAugConfig | None = None
    speed_perturb: tuple[float, ...] | None = None

    @property
    def active(self) -> bool:
        return self.dither > 0 or self.needs_on_the_fly

    @property
    def needs_on_the_fly(self) -> bool:
        """SpecAugment or speed perturbation: draws per (epoch, example) that cached (precomputed) features cannot
        hold; dither alone is merely left out of them."""
        return self.specaug is not None or self.speed_perturb is not None

    @property
    def changes_ids(self) -> bool:
        """Speed perturbation changes a clip's length, hence its audio-token count: ids are rebuilt per example."""
        return self.speed_perturb is not None

    def rng(self, epoch: int, index: int, stream: int) -> np.random.Generator:
        """The example's generator for one kind of draw (`SPEED_STREAM`, `SPECAUG_STREAM`)."""
        return np.random.default_rng([int(self.seed) & 0xFFFFFFFF, int(epoch), int(index), int(stream)])

    def speed(self, epoch: int, index: int) -> float:
        """The example's speed factor this epoch, uniform over `speed_perturb` (FunASR's `random.choice`)."""
        if self.speed_perturb is None:
            return 1.0
        return float(self.speed_perturb[int(self.rng(epoch, index, SPEED_STREAM).integers(len(self.speed_perturb)))])

    def extractor(self, extractor: Any) -> Any:
        """A copy of `extractor` that dithers (the caller's stays clean, e.g. for evaluation)."""
        if self.dither <= 0:
            return extractor
        noisy = copy.copy(extractor)
        noisy.dither = float(self.dither)
        return noisy
