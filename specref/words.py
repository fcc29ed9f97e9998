"""Words of a prompt -> CLIP token positions, from the tokenizer's character spans (§4.2)."""
from __future__ import annotations

import re
from collections.abc import Sequence

import torch

from model.tokenizer import CLIPTokenizer, Encoding

# A word is a maximal run of characters other than whitespace, ',' and '.' (§4.2, §6 note).
_WORD = re.compile(r"[^\s,.]+")
# Replace's "space-separated words" (§4.1): maximal runs of non-whitespace.
_CHUNK = re.compile(r"\S+")


def word_spans(prompt: str, whitespace_only: bool = False) -> list[tuple[str, int, int]]:
    """(word, start, end) of each word of the prompt; split on whitespace, ',' and '.' (or whitespace only)."""
    pattern = _CHUNK if whitespace_only else _WORD
    return [(m.group(), m.start(), m.end()) for m in pattern.finditer(prompt)]


def words_of(prompt: str) -> list[str]:
    """The words of a prompt, split on whitespace, ',' and '.'."""
    return [w for w, _, _ in word_spans(prompt)]


def span_tokens(enc: Encoding, start: int, end: int) -> list[int]:
    """1-based token positions whose character span overlaps [start, end) (position 0 is <|startoftext|>)."""
    return [k + 1 for k, (s, e) in enumerate(enc.spans) if s < end and e > start]


def find_word(prompt: str, word: str) -> list[tuple[int, int]]:
    """The character spans of every whole-word, case-insensitive occurrence of `word` in `prompt`; a clear error
    when there is none (§4.2: never an empty selection)."""
    if not word or _WORD.fullmatch(word) is None:
        raise ValueError(f"{word!r} is not a single word (words are split on whitespace, ',' and '.')")
    places = [(s, e) for w, s, e in word_spans(prompt) if w.lower() == word.lower()]
    if not places:
        raise ValueError(f"word {word!r} is not in the prompt {prompt!r} (words: {words_of(prompt)})")
    return places


def word_token_indices(tok: CLIPTokenizer, prompt: str, word: str) -> list[int]:
    """1-based token positions of every whole-word, case-insensitive occurrence of `word` in `prompt`."""
    places = find_word(prompt, word)
    enc = tok.encode(prompt)
    last = enc.spans[-1][1] if enc.spans else 0
    out: list[int] = []
    for s, e in places:
        if enc.truncated and e > last:
            raise ValueError(f"word {word!r} of prompt {prompt!r} is past the {tok.max_length}-token limit")
        out += span_tokens(enc, s, e)
    if not out:
        raise ValueError(f"word {word!r} of prompt {prompt!r} has no tokens")
    return sorted(out)


def word_vector(tok: CLIPTokenizer, prompt: str, words: Sequence[str], max_len: int = 77) -> torch.Tensor:
    """Float [max_len] with 1 at the token positions of the given words, else 0 (blend/substruct words)."""
    vec = torch.zeros(max_len, dtype=torch.float64)  # 0/1; cast by P2PPlan.to
    for w in words:
        vec[word_token_indices(tok, prompt, w)] = 1.0
    return vec
