"""FunASR's ``fsmn-vad`` as the pause finder for long recordings, when the user gives a VAD model folder.

FunASR users pair Fun-ASR-Nano with ``vad_model="fsmn-vad"`` (``vad_kwargs={"max_single_segment_time": 30000}``
in the Nano examples): the VAD returns speech intervals ``[[beg_ms, end_ms], ...]``, each decoded on its own,
the texts joined. This module runs that same VAD - ``funasr.AutoModel(model=<folder>)`` and its
``generate(input=waveform)``, FunASR's own code, nothing re-implemented - and turns its intervals into our
`Segment` list. It is the ONLY product module that imports ``funasr``, lazily, and only when a VAD folder is
given: FunASR is the optional extra ``pip install funasr-nano-hf[funasr]``.

What is ours: the interval -> sample conversion (clamped to the clip); FunASR's ``max_single_segment_time``
set to the span less one frame (FunASR ends a segment one frame past it), so FunASR itself cuts long speech;
and, as a guarantee (nothing over the encoder's position table may reach the model), any interval still over
the span cut at its quietest 10 ms block as the energy path does. FunASR's process-wide side effects (stdout
prints, root logging, the global RNG seeds, torch's thread count) are contained, so transcribe's JSONL on
stdout and the caller's state stay untouched. Clips that fit the span are decoded whole, as with the energy
path (FunASR would run its VAD on them too).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import random
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from .segmentation import BLOCK_S, Segment, block_energy_db, split_at_quiet

INSTALL_HINT = "pip install funasr-nano-hf[funasr]"
REQUIRED_FILES = ("config.yaml", "model.pt")


def check_vad_folder(folder: str | Path) -> Path:
    """The folder FunASR's AutoModel loads offline: ``config.yaml`` + ``model.pt`` (``am.mvn`` when the
    config names it); a ValueError naming what is missing otherwise. No funasr import."""
    path = Path(folder)
    if not path.is_dir():
        raise ValueError(f"VAD model folder {folder} is not a folder (expected FunASR's fsmn-vad model folder)")
    missing = [name for name in REQUIRED_FILES if not (path / name).is_file()]
    if missing:
        raise ValueError(
            f"VAD model folder {folder} has no {' / '.join(missing)} (expected FunASR's fsmn-vad folder: config.yaml, "
            "model.pt, am.mvn, as downloaded from iic/speech_fsmn_vad_zh-cn-16k-common-pytorch)"
        )
    return path


@contextlib.contextmanager
def _contained() -> Iterator[None]:
    """Run FunASR with its prints on stderr, and the root logger, RNGs and torch threads restored after."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    threads = torch.get_num_threads()
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=[]), contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        torch.set_num_threads(threads)
        random.setstate(py_state)
        np.random.set_state(np_state)


def require_funasr() -> None:
    """Import funasr (the optional extra), or an ImportError that says how to install it."""
    try:
        with _contained():
            import funasr  # noqa: F401
    except ImportError as err:
        raise ImportError(
            f"FunASR's fsmn-vad (the VAD model folder) needs the funasr package, which is not installed ({err}); "
            f"install the optional extra: {INSTALL_HINT} (or give no VAD folder: the built-in energy "
            "segmentation needs nothing)"
        ) from err


class FsmnVad:
    """FunASR's fsmn-vad from a local folder; FunASR cuts speech longer than `max_segment_ms` itself."""

    def __init__(self, folder: str | Path, max_segment_ms: int) -> None:
        path = check_vad_folder(folder)
        require_funasr()
        from funasr import AutoModel

        with _contained():
            self.model = AutoModel(
                model=str(path),
                device="cpu",
                ncpu=torch.get_num_threads(),
                disable_update=True,
                disable_pbar=True,
                log_level="ERROR",
            )
        options = self.model.model.vad_opts
        # FunASR ends a segment one frame after it exceeds max_single_segment_time: one frame less keeps it in
        options.max_single_segment_time = int(max_segment_ms) - int(options.frame_in_ms)

    def speech_ms(self, waveform: np.ndarray, sampling_rate: int) -> list[tuple[int, int]]:
        """FunASR's speech intervals (ms) for a mono float waveform: ``generate(input=...)[0]["value"]``."""
        with _contained(), torch.inference_mode():
            (result,) = self.model.generate(input=np.asarray(waveform, np.float32), fs=sampling_rate)
        return [(int(beg), int(end)) for beg, end in result["value"]]


@functools.lru_cache(maxsize=4)
def load_fsmn_vad(folder: str, max_segment_ms: int) -> FsmnVad:
    """One loaded VAD per (folder, span): segmenting many files loads it once."""
    return FsmnVad(folder, max_segment_ms)


def vad_segments(waveform: np.ndarray, sampling_rate: int, folder: str, span_samples: int) -> list[Segment]:
    """FunASR's speech intervals as `Segment` s (samples, clamped to the clip, empty ones dropped); an
    interval still longer than `span_samples` is cut at its quietest blocks (`split_at_quiet`)."""
    vad = load_fsmn_vad(str(folder), int(span_samples * 1000 // sampling_rate))
    intervals = [
        (min(len(waveform), beg * sampling_rate // 1000), min(len(waveform), end * sampling_rate // 1000))
        for beg, end in vad.speech_ms(waveform, sampling_rate)
    ]
    intervals = [(a, b) for a, b in intervals if b > a]
    if all(b - a <= span_samples for a, b in intervals):
        return [Segment(a, b) for a, b in intervals]
    hop = int(round(sampling_rate * BLOCK_S))
    energy = block_energy_db(waveform, sampling_rate)
    segments = []
    for a, b in intervals:
        if b - a <= span_samples:
            segments.append(Segment(a, b))
            continue
        first, last = a // hop, -(-b // hop)  # the blocks covering the interval
        pieces = split_at_quiet(energy, first, last, span_samples // hop)
        bounds = [a] + [cut * hop for _, cut in pieces[:-1]] + [b]
        segments += [Segment(x, y) for x, y in zip(bounds, bounds[1:])]
    return segments


__all__ = ["INSTALL_HINT", "FsmnVad", "check_vad_folder", "load_fsmn_vad", "require_funasr", "vad_segments"]
