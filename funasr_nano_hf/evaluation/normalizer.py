"""Text normalisation and tokenisation for scoring mixed Chinese/English ASR output.

Every CER this project reports is computed on text passed through `normalize_text` and split by
`tokenize_for_cer`. Numbers computed with a different normaliser are not comparable, which is why
`NORMALIZER_NAME` is reported next to every CER: change the rules below and the name must change too
(bump the ``_vN`` suffix), never silently.

Normalisation (`normalize_text`), in this order:

1. **Unicode NFKC.** Folds compatibility forms, chiefly full-width ASCII to half-width
   ("ＡＢＣ１２３" -> "ABC123", "，" -> ",") and half-width katakana to full-width, so that the same text
   typed in either width scores identically. Side effects worth knowing: "…" becomes "...", "①" becomes
   "1", "²" becomes "2".
2. **Lower-case** (`str.lower`). Case carries no acoustic information; "OK" and "ok" are the same word.
3. **Remove punctuation.** Every character of Unicode category P* (covers CJK punctuation such as
   ，。！？、；：“”‘’（）《》【】…—·「」 and all ASCII punctuation), plus the ASCII symbols of
   `string.punctuation` that Unicode files under S* ($ % & + < = > ^ ` | ~). Punctuation is not spoken,
   and references and hypotheses punctuate inconsistently. Apostrophes (' and the curly ‘ ’) are deleted
   so contractions stay one word ("don't" -> "dont"); every other punctuation mark becomes a space so
   "hello,world" stays two words. Other symbols (currency signs, emoji, maths) are kept.
4. **Collapse whitespace.** Invisible format characters (category Cf: zero-width space, BOM, ...) are
   deleted, runs of whitespace become one space, and the ends are stripped.

Tokenisation (`tokenize_for_cer`) then gives the units that edits are counted over:

* each character of a script written without spaces between words is one token: CJK Unified Ideographs
  (basic block, extension A, extensions B and later, compatibility ideographs), Hiragana, Katakana and
  Hangul syllables;
* any other run of non-space characters (Latin letters, digits, ...) is one token, i.e. English is
  scored by word. A run ends at whitespace or at a CJK character ("用iPhone拍" -> 用 / iphone / 拍).

So "我想问 Hello world，OK!" -> ["我", "想", "问", "hello", "world", "ok"]. Known limitation: other
unspaced scripts (Thai, Lao, Khmer, ...) fall under the word rule and are scored by whole run.
"""

from __future__ import annotations

import re
import string
import unicodedata

NORMALIZER_NAME = "funasr_nano_hf.mixed_v1"

# Deleted outright rather than spaced, so contractions stay one token.
_APOSTROPHES = frozenset("'\u2018\u2019")
_ASCII_PUNCTUATION = frozenset(string.punctuation)

# Characters scored one per token. Ranges are inclusive code points.
_CJK_RANGES: tuple[tuple[int, int], ...] = (
    (0x3040, 0x309F),  # Hiragana
    (0x30A0, 0x30FF),  # Katakana
    (0x31F0, 0x31FF),  # Katakana Phonetic Extensions
    (0x3400, 0x4DBF),  # CJK Unified Ideographs Extension A
    (0x4E00, 0x9FFF),  # CJK Unified Ideographs
    (0xAC00, 0xD7A3),  # Hangul Syllables
    (0xF900, 0xFAFF),  # CJK Compatibility Ideographs (NFKC maps most of them to unified ones)
    (0x20000, 0x2FA1F),  # CJK Unified Ideographs Extensions B-F, Compatibility Ideographs Supplement
    (0x30000, 0x323AF),  # CJK Unified Ideographs Extensions G-H
)
_CJK_CLASS = "".join(f"\\U{lo:08X}-\\U{hi:08X}" for lo, hi in _CJK_RANGES)
# One CJK character, or a maximal run of characters that are neither whitespace nor CJK.
_TOKEN_RE = re.compile(f"[{_CJK_CLASS}]|[^\\s{_CJK_CLASS}]+")


def _strip_punctuation(text: str) -> str:
    """Step 3: drop apostrophes, turn other punctuation into spaces, delete invisible format chars."""
    out: list[str] = []
    for ch in text:
        if ch in _APOSTROPHES:
            continue
        category = unicodedata.category(ch)
        if category == "Cf":  # zero-width space, BOM, ...: belongs to step 4 but costs nothing here
            continue
        if category.startswith("P") or ch in _ASCII_PUNCTUATION:
            out.append(" ")
        else:
            out.append(ch)
    return "".join(out)


def normalize_text(text: str) -> str:
    """Normalise one transcript for scoring (NFKC, lower-case, no punctuation, single spaces).

    Idempotent: normalising twice gives the same string as normalising once.
    """
    if not isinstance(text, str):
        raise TypeError(f"normalize_text expects str, got {type(text).__name__}")
    text = unicodedata.normalize("NFKC", text)
    text = text.lower()
    text = _strip_punctuation(text)
    return " ".join(text.split())


def tokenize_for_cer(text: str) -> list[str]:
    """Normalise `text`, then split it into scoring tokens: one per CJK character, one per other word."""
    return _TOKEN_RE.findall(normalize_text(text))


__all__ = ["NORMALIZER_NAME", "normalize_text", "tokenize_for_cer"]
