"""Fun-ASR-Nano on the Hugging Face stack: FunASR's speech recogniser as transformers classes, numerically equal.

`load_pretrained` reads FunASR's ORIGINAL folder (config.yaml + model.pt + Qwen3-0.6B/) or an HF folder that
`save_hf_folder` wrote; `transcribe` runs it; `conversion.export.export_funasr` writes the original layout back.
`import funasr_nano_hf` registers our config/model/processor with the transformers Auto classes and our
Fun-ASR-Nano route in transformers' "automatic-speech-recognition" pipeline.

The `funasr-nano-hf` command imports this package too; there the registration waits for the sub-command that
needs it (each imports what it uses), so ``--help`` answers without loading torch. The public names below are
resolved on first use either way.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

from .errors import AudioError, CheckpointError, DataError, NonFiniteLossError, TrainingOutOfMemoryError

__version__ = "0.1.0"

# public name -> the module that defines it (imported on first use)
_LAZY = {
    "FunAsrNanoHfConfig": ".models",
    "FunAsrNanoHfFeatureExtractor": ".models",
    "FunAsrNanoHfForConditionalGeneration": ".models",
    "FunAsrNanoHfModel": ".models",
    "FunAsrNanoHfProcessor": ".models",
    "load_pretrained": ".conversion",
    "save_hf_folder": ".conversion",
    "transcribe": ".inference",
    "load_for_inference": ".inference",
}

__all__ = [
    "AudioError",
    "CheckpointError",
    "DataError",
    "NonFiniteLossError",
    "TrainingOutOfMemoryError",
    *_LAZY,
]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _started_by_the_command() -> bool:
    """True while the `funasr-nano-hf` console script is starting (its argv[0] is the script)."""
    return bool(sys.argv) and Path(sys.argv[0]).name.removesuffix(".exe") == "funasr-nano-hf"


def register() -> None:
    """Register the config/model/processor with the Auto classes and the ASR pipeline route (idempotent)."""
    from . import models  # noqa: F401  (registers with the Auto classes on import)
    from .inference import pipeline  # noqa: F401  (routes the ASR pipeline for our model type)


if not _started_by_the_command():
    register()
