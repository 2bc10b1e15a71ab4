"""Corpus error rates of transcripts in three units, all after the one normaliser (`normalizer`):

* ``cer`` -- character error rate: every non-space character of the normalised text is a unit (spaces are not
  counted: Chinese references put spaces between Chinese and English inconsistently, and a CER that charged
  them would score spacing, not recognition);
* ``wer`` -- word error rate: whitespace-separated words of the normalised text (an unspaced Chinese run is one
  "word", which is why Chinese is judged by CER);
* ``mer`` -- mixed error rate, the usual measure for code-switched Chinese/English ASR: each CJK character one
  unit, each other word one unit (`normalizer.tokenize_for_cer`). On pure Chinese it equals the CER, on pure
  English the WER. (Not jiwer's "match error rate", which shares the abbreviation.)

Each rate is corpus-level: total edits over total reference units (not a mean of per-utterance rates), the
minimum-edit alignment computed by jiwer. Hand-written only where jiwer has no rule: the empty sides (jiwer 3.0
rejects empty references) and the units above.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .normalizer import NORMALIZER_NAME, normalize_text, tokenize_for_cer

# The rates this module reports, by the name they carry in metrics (``eval_<name>``) and model cards.
RATE_NAMES: dict[str, str] = {
    "cer": "character error rate",
    "wer": "word error rate",
    "mer": "mixed error rate (CJK characters + other words)",
}


def characters(text: str) -> list[str]:
    """The CER units of `text`: its normalised characters, spaces left out."""
    return [ch for ch in normalize_text(text) if not ch.isspace()]


def words(text: str) -> list[str]:
    """The WER units of `text`: its normalised whitespace-separated words."""
    return normalize_text(text).split()


UNITS: dict[str, Callable[[str], list[str]]] = {"cer": characters, "wer": words, "mer": tokenize_for_cer}


@dataclass(frozen=True)
class EditCounts:
    """Alignment counts of one unit over a corpus."""

    substitutions: int = 0
    deletions: int = 0
    insertions: int = 0
    hits: int = 0

    @property
    def reference_units(self) -> int:
        return self.substitutions + self.deletions + self.hits

    @property
    def rate(self) -> float:
        """Total edits / reference units; may exceed 1.0 with many insertions."""
        return (self.substitutions + self.deletions + self.insertions) / self.reference_units


def count_edits(predictions: Sequence[str], references: Sequence[str], units: Callable[[str], list[str]]) -> EditCounts:
    """Minimum-edit alignment counts of `predictions` against `references`, split into `units`.

    A prediction with no unit deletes every reference unit; a reference with no unit adds its prediction's
    units as insertions and nothing to the denominator."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    deletions = insertions = 0
    aligned_refs: list[str] = []
    aligned_hyps: list[str] = []
    for prediction, reference in zip(predictions, references):
        ref, hyp = units(reference), units(prediction)
        if not ref:
            insertions += len(hyp)
        elif not hyp:
            deletions += len(ref)
        else:  # units never hold whitespace: joined with spaces they round-trip through jiwer's word split
            aligned_refs.append(" ".join(ref))
            aligned_hyps.append(" ".join(hyp))
    if not aligned_refs:
        return EditCounts(deletions=deletions, insertions=insertions)
    import jiwer  # lazily: importing the package's scoring names stays cheap

    out = jiwer.process_words(aligned_refs, aligned_hyps)
    return EditCounts(out.substitutions, out.deletions + deletions, out.insertions + insertions, out.hits)


def error_rates(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float | int | str]:
    """``cer``, ``wer``, ``mer`` of raw `predictions` against raw `references`, plus the mixed units'
    alignment counts (``substitutions``, ``deletions``, ``insertions``, ``hits``, ``reference_tokens``), the
    reference character and word counts, and the ``normalizer`` name (report it next to the numbers).

    Raises ValueError when every reference is empty after normalisation: the rates are undefined."""
    counts = {name: count_edits(predictions, references, unit) for name, unit in UNITS.items()}
    if counts["mer"].reference_units == 0:
        raise ValueError(
            f"error rates: all {len(references)} references are empty after normalisation "
            f"({NORMALIZER_NAME}); the error rate is undefined."
        )
    mixed = counts["mer"]
    return {
        "cer": counts["cer"].rate,
        "wer": counts["wer"].rate,
        "mer": mixed.rate,
        "substitutions": mixed.substitutions,
        "deletions": mixed.deletions,
        "insertions": mixed.insertions,
        "hits": mixed.hits,
        "reference_tokens": mixed.reference_units,
        "reference_characters": counts["cer"].reference_units,
        "reference_words": counts["wer"].reference_units,
        "normalizer": NORMALIZER_NAME,
    }


__all__ = ["RATE_NAMES", "UNITS", "EditCounts", "characters", "count_edits", "error_rates", "words"]
