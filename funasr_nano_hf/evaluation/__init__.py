"""Scoring: one normaliser and one metric (CER, WER and the mixed error rate, `error_rates`), so every number the
project reports is comparable.

`load_cer_metric()` loads the bundled `evaluate` module (`metrics/mixed_cer`) from the installed package,
never from the Hub, so it works with HF_HUB_OFFLINE=1 / HF_DATASETS_OFFLINE=1 (`evaluate.load("cer")`
would need the network and uses a different normaliser). `evaluate` is imported lazily so that importing
the normaliser stays cheap.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING, Any

from funasr_nano_hf.evaluation.error_rates import RATE_NAMES, error_rates
from funasr_nano_hf.evaluation.normalizer import NORMALIZER_NAME, normalize_text, tokenize_for_cer

if TYPE_CHECKING:
    import evaluate

MIXED_CER_PATH = Path(__file__).resolve().parent / "metrics" / "mixed_cer"


def load_cer_metric(**kwargs: Any) -> evaluate.EvaluationModule:
    """Load the mixed zh/en CER metric from the package folder (offline); `kwargs` go to `evaluate.load`.

    Defaults to `keep_in_memory=True` for a single process, so scoring writes no Arrow cache files and
    concurrent runs sharing ~/.cache do not contend for its locks. Pass `num_process`/`process_id` for
    evaluate's distributed gathering (that path needs the on-disk cache, so it is left on there).
    """
    import evaluate

    kwargs.setdefault("keep_in_memory", kwargs.get("num_process", 1) == 1)
    return evaluate.load(str(MIXED_CER_PATH), **kwargs)


@functools.lru_cache(maxsize=1)
def _default_metric() -> evaluate.EvaluationModule:
    """Load once per process: `compute_cer` is called on every evaluation step."""
    return load_cer_metric()


def compute_error_rates(predictions: list[str], references: list[str]) -> dict[str, Any]:
    """Corpus ``cer`` (characters), ``wer`` (words) and ``mer`` (mixed: CJK characters + other words) of raw
    `predictions` against raw `references` via the bundled metric (`error_rates.error_rates` has the dict).

    Not thread-safe (it reuses one metric instance); call `load_cer_metric()` per thread if needed.
    """
    return _default_metric().compute(predictions=list(predictions), references=list(references))


# The name callers used before the metric reported WER and the mixed rate as well; same dict.
compute_cer = compute_error_rates


__all__ = [
    "MIXED_CER_PATH",
    "NORMALIZER_NAME",
    "RATE_NAMES",
    "compute_cer",
    "compute_error_rates",
    "error_rates",
    "load_cer_metric",
    "normalize_text",
    "tokenize_for_cer",
]
