"""CER, WER and the mixed Chinese/English error rate as an `evaluate` module (`error_rates`).

Load it offline with `evaluate.load(<this folder>)` or, simpler, `funasr_nano_hf.evaluation.load_cer_metric()`.
`evaluate` copies this file into its modules cache and imports it from there, so it must import the
normaliser from the installed package by absolute name (a relative import would not resolve).
"""

from __future__ import annotations

import datasets
import evaluate

from funasr_nano_hf.evaluation.error_rates import error_rates
from funasr_nano_hf.evaluation.normalizer import NORMALIZER_NAME

_CITATION = """\
@inproceedings{morris2004,
  author = {Morris, Andrew and Maier, Viktoria and Green, Phil},
  year = {2004},
  title = {From WER and RIL to MER and WIL: improved evaluation measures for connected speech recognition.}
}
"""

_DESCRIPTION = f"""\
Corpus-level error rates for (mixed Chinese/English) speech recognition in three units: "cer" (characters),
"wer" (words) and "mer" (mixed: each CJK character one unit, every other word one unit).

Both texts are normalised with `{NORMALIZER_NAME}` (NFKC, lower-case, punctuation removed, whitespace
collapsed; see funasr_nano_hf/evaluation/normalizer.py). cer counts the non-space characters, wer the
whitespace-separated words, mer the mixed units: for pure Chinese mer is the character error rate, for
English the word error rate, and an English word in Chinese text costs one error, not one per letter
(funasr_nano_hf/evaluation/error_rates.py).

rate = (substitutions + deletions + insertions) / reference units, summed over the whole corpus (not a
mean of per-utterance rates), with the minimum-edit alignment computed by jiwer.

Empty texts: a prediction that normalises to nothing counts every reference unit as a deletion. A
reference that normalises to nothing (e.g. only punctuation) contributes its prediction's units as
insertions and nothing to the denominator. If ALL references are empty the rates are undefined and a
ValueError is raised rather than returning 0 or inf.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `str`): recogniser outputs, raw (normalisation is applied here).
    references (`list` of `str`): ground-truth transcripts, raw, same length as `predictions`.
Returns:
    cer, wer, mer (`float`): total edits / total reference units; may exceed 1.0 with many insertions.
    substitutions, deletions, insertions, hits (`int`): the mixed units' alignment counts over the corpus.
    reference_tokens (`int`): total reference mixed units (= substitutions + deletions + hits).
    reference_characters, reference_words (`int`): total reference characters and words.
    normalizer (`str`): name of the normaliser used; report it next to the numbers.
Examples:
    >>> metric = evaluate.load("path/to/mixed_cer")
    >>> metric.compute(predictions=["我想问 hello word"], references=["我想问，Hello world！"])["mer"]
    0.2
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class MixedCer(evaluate.Metric):
    """CER / WER / mixed error rate after one normaliser (`error_rates.error_rates`)."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Value("string", id="sequence"),
                    "references": datasets.Value("string", id="sequence"),
                }
            ),
            codebase_urls=["https://github.com/jitsi/jiwer/"],
            reference_urls=["https://en.wikipedia.org/wiki/Word_error_rate"],
        )

    def _compute(self, predictions: list[str], references: list[str]) -> dict:
        return error_rates(predictions, references)
