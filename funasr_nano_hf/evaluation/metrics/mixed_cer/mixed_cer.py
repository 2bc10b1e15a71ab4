"""Mixed Chinese/English error rate as an `evaluate` module (Chinese by character, other scripts by word).

Load it offline with `evaluate.load(<this folder>)` or, simpler, `funasr_nano_hf.evaluation.load_cer_metric()`.
`evaluate` copies this file into its modules cache and imports it from there, so it must import the
normaliser from the installed package by absolute name (a relative import would not resolve).
"""

from __future__ import annotations

import datasets
import evaluate
import jiwer

from funasr_nano_hf.evaluation.normalizer import NORMALIZER_NAME, tokenize_for_cer

_CITATION = """\
@inproceedings{morris2004,
  author = {Morris, Andrew and Maier, Viktoria and Green, Phil},
  year = {2004},
  title = {From WER and RIL to MER and WIL: improved evaluation measures for connected speech recognition.}
}
"""

_DESCRIPTION = f"""\
Corpus-level token error rate for mixed Chinese/English speech recognition, reported as "cer".

Both texts are normalised with `{NORMALIZER_NAME}` (NFKC, lower-case, punctuation removed, whitespace
collapsed; see funasr_nano_hf/evaluation/normalizer.py) and split into tokens: each CJK character
(ideographs, kana, Hangul syllables) is one token and every other whitespace-delimited run (an English
word, a number) is one token. For pure Chinese this is the usual character error rate; for English it is
the word error rate; mixed text is scored per Chinese character plus per English word, so an English word
costs one error, not one per letter.

cer = (substitutions + deletions + insertions) / reference_tokens, summed over the whole corpus (not a
mean of per-utterance rates), with the minimum-edit alignment computed by jiwer.

Empty texts: a prediction that normalises to nothing counts every reference token as a deletion. A
reference that normalises to nothing (e.g. only punctuation) contributes its prediction's tokens as
insertions and nothing to the denominator. If ALL references are empty the rate is undefined and a
ValueError is raised rather than returning 0 or inf.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `str`): recogniser outputs, raw (normalisation is applied here).
    references (`list` of `str`): ground-truth transcripts, raw, same length as `predictions`.
Returns:
    cer (`float`): total edits / total reference tokens; may exceed 1.0 when there are many insertions.
    substitutions, deletions, insertions, hits (`int`): alignment counts summed over the corpus.
    reference_tokens (`int`): total reference tokens (= substitutions + deletions + hits).
    normalizer (`str`): name of the normaliser used; report it next to the number.
Examples:
    >>> metric = evaluate.load("path/to/mixed_cer")
    >>> metric.compute(predictions=["我想问 hello word"], references=["我想问，Hello world！"])["cer"]
    0.2
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class MixedCer(evaluate.Metric):
    """Token error rate over `tokenize_for_cer` tokens, so every reported CER uses one normaliser."""

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
        substitutions = deletions = insertions = hits = 0
        aligned_refs: list[str] = []
        aligned_hyps: list[str] = []
        for prediction, reference in zip(predictions, references):
            ref_tokens = tokenize_for_cer(reference)
            hyp_tokens = tokenize_for_cer(prediction)
            # Empty sides are counted here, not by jiwer: older jiwer (3.0) rejects empty references, and
            # the rule (all insertions / all deletions) is the same either way.
            if not ref_tokens:
                insertions += len(hyp_tokens)
            elif not hyp_tokens:
                deletions += len(ref_tokens)
            else:
                # Tokens never contain whitespace, so joining with spaces round-trips through jiwer's
                # default word split exactly.
                aligned_refs.append(" ".join(ref_tokens))
                aligned_hyps.append(" ".join(hyp_tokens))

        if aligned_refs:
            out = jiwer.process_words(aligned_refs, aligned_hyps)
            substitutions += out.substitutions
            deletions += out.deletions
            insertions += out.insertions
            hits += out.hits

        reference_tokens = substitutions + deletions + hits
        if reference_tokens == 0:
            raise ValueError(
                f"mixed_cer: all {len(references)} references are empty after normalisation "
                f"({NORMALIZER_NAME}); the error rate is undefined."
            )
        return {
            "cer": (substitutions + deletions + insertions) / reference_tokens,
            "substitutions": substitutions,
            "deletions": deletions,
            "insertions": insertions,
            "hits": hits,
            "reference_tokens": reference_tokens,
            "normalizer": NORMALIZER_NAME,
        }
