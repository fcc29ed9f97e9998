"""References as users have them (docs/spec.md §8): several views of one object, one reference per target word,
and mask_s found by the reference's own cross-attention during stage 1. All off by default: one plain reference
is exactly §3-§4.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch import Tensor

from .masks import mask_t_from_maps
from .words import find_word

AUTO = "auto"  # a Reference's mask: found from the reference's cross-attention to its words in stage 1 (§8.3)


@dataclass(frozen=True)
class Reference:
    """A reference image, its object mask and the target words whose region takes it.

    mask: a mask image / file (white = object, or RGBA alpha), a bool array, None (the image's non-black /
    alpha > 0 pixels, §4.4) or "auto" (§8.3). target_words: target-prompt words whose own region takes this
    reference (`--for`, §8.2); () = the edit's target words. prompt / auto_mask_words: the prompt it is inverted
    with and the words of that prompt an auto mask reads (None: the config's reference_prompt / auto_mask_words).
    """

    image: str | Path | Image.Image
    mask: str | Path | Image.Image | np.ndarray | None = None
    target_words: tuple[str, ...] = ()
    prompt: str | None = None
    auto_mask_words: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        for name in ("target_words", "auto_mask_words"):
            value = getattr(self, name)
            if isinstance(value, str):
                object.__setattr__(self, name, (value,))
            elif value is not None:
                object.__setattr__(self, name, tuple(value))

    @property
    def auto(self) -> bool:
        """True if mask_s comes from the reference's cross-attention (§8.3)."""
        return isinstance(self.mask, str) and self.mask == AUTO

    @property
    def words(self) -> tuple[str, ...]:
        """Earlier name of target_words."""
        return self.target_words

    @property
    def mask_words(self) -> tuple[str, ...] | None:
        """Earlier name of auto_mask_words."""
        return self.auto_mask_words


_REFERENCE_ALIASES = {"words": "target_words", "mask_words": "auto_mask_words"}
_reference_init = Reference.__init__


def _init_with_aliases(self: Reference, *args: Any, **kw: Any) -> None:
    """Reference(words=..., mask_words=...) keeps working: earlier names map to the new ones."""
    _reference_init(self, *args, **{_REFERENCE_ALIASES.get(k, k): v for k, v in kw.items()})


Reference.__init__ = _init_with_aliases  # type: ignore[method-assign]


@dataclass(frozen=True)
class WordGroup:
    """Target words whose own mask_t region takes the references `refs` (indices into the reference list, §8.2)."""

    words: tuple[str, ...]
    refs: tuple[int, ...]
    tokens: list[int] | None = None     # target-prompt token positions of `words` (None: mask_t all ones)


def as_references(reference: Any, mask: Any = None) -> list[Reference]:
    """The editor's `reference` argument as a list: one image (+ mask file) as before, a Reference, or a list."""
    if reference is None:
        return []
    if isinstance(reference, (list, tuple)):
        if mask is not None:
            raise ValueError("with a list of references give each one's mask in its Reference(mask=...), "
                             "not reference_mask_file")
        refs = [r if isinstance(r, Reference) else Reference(r) for r in reference]
        if not refs:
            raise ValueError("the reference list is empty (use reference=None for the P2P baseline)")
        return refs
    if isinstance(reference, Reference):
        if mask is not None:
            raise ValueError("give the mask in Reference(mask=...), not also as reference_mask_file")
        return [reference]
    return [Reference(reference, mask)]


def word_groups(target_words: tuple[str, ...], refs: list[Reference]) -> tuple[tuple[str, ...], list[WordGroup]]:
    """(target words, groups). No `--for`: one group of every reference on the target words (§4.4). Otherwise one
    group per distinct word binding (§8.2); references bound to the same words are views of one object (§8.1)."""
    if not any(r.target_words for r in refs):
        return tuple(target_words), [WordGroup(tuple(target_words), tuple(range(len(refs))))]
    if not all(r.target_words for r in refs):
        raise ValueError("bind every reference to target words (--for WORD after each --reference) or none")
    groups: dict[tuple[str, ...], list[int]] = {}
    owner: dict[str, tuple[str, ...]] = {}
    for i, r in enumerate(refs):
        ws = r.target_words
        if len(set(ws)) != len(ws):
            raise ValueError(f"reference {i + 1} is bound to the same word twice: {', '.join(ws)}")
        for w in ws:
            if owner.setdefault(w, ws) != ws:
                raise ValueError(f"target word {w!r} is bound twice, to '{','.join(owner[w])}' and "
                                 f"'{','.join(ws)}': a word can have one region; bind several views of one "
                                 f"object with the same --for words")
        groups.setdefault(ws, []).append(i)
    words = tuple(w for ws in groups for w in ws)
    return words, [WordGroup(ws, tuple(ix)) for ws, ix in groups.items()]


def stage1_extra(map_blocks: tuple[int, ...], refs: list[Reference] | None) -> tuple:
    """What stage 1 depends on in the references besides their images: () for one plain reference (so that
    stage1_key(cfg) is unchanged); else the count, each one's prompt override and auto flag, and the map blocks
    the auto masks read. Mask words and thresholds are stage 2: the inversion keeps every token's map."""
    if not refs or (len(refs) == 1 and refs[0].prompt is None and not refs[0].auto):
        return ()
    auto = tuple(map_blocks) if any(r.auto for r in refs) else None
    return (tuple((r.prompt, r.auto) for r in refs), auto)


def auto_mask_s(maps: Tensor, tokens: list[int], hw: tuple[int, int], interp: str, thres: float,
                name: str = "reference") -> np.ndarray:
    """Bool [H, W] mask_s from a reference's summed cross-attention maps [h, w, 77] (§8.3): its words' columns
    summed, min-max normalised, resized and >= thres, as mask_t is (§4.4)."""
    try:
        return mask_t_from_maps(maps, tokens, hw, interp, thres).cpu().numpy()
    except ValueError as e:
        raise ValueError(f"auto mask_s of {name} selects nothing ({e}): lower --auto-mask-thres, use other "
                         f"--auto-mask-words, or give a mask file") from None


def check_references(cfg: Any, refs: list[Reference]) -> None:
    """Everything about the references that needs no model (§8): word bindings, auto-mask words; one-line errors."""
    if not cfg.use_reference or not refs:
        return
    target_words, groups = word_groups(cfg.target_words, refs)
    if cfg.masks in ("both", "t") and not target_words:  # §4.4: mask_t is read from the target words' maps
        raise ValueError("mask_t needs target words (--target-words, or --for after each --reference), "
                         "or use --masks s|none")
    for w in target_words if any(r.target_words for r in refs) else ():
        try:
            find_word(cfg.target_prompt, w)
        except ValueError as e:
            raise ValueError(f"--for: {e}") from None
    if len(groups) > 1 and cfg.masks not in ("both", "t"):
        raise ValueError("one reference per target word needs each word's mask_t: use --masks both or t")
    names = ["reference"] if len(refs) == 1 else [f"reference {i + 1}" for i in range(len(refs))]
    for r, name in zip(refs, names):
        if not r.auto:
            continue
        words = cfg.auto_mask_words if r.auto_mask_words is None else r.auto_mask_words
        prompt = cfg.reference_prompt if r.prompt is None else r.prompt
        if not words:
            raise ValueError(f"{name}: an auto mask needs its words (--auto-mask-words WORD, a word of "
                             f"--reference-prompt, e.g. --reference-prompt 'a tiger' --auto-mask-words tiger)")
        for w in words:
            try:
                find_word(prompt, w)
            except ValueError as e:
                raise ValueError(f"{name}: the auto mask reads the reference's cross-attention to its words, so "
                                 f"give a --reference-prompt that contains {w!r} ({e})") from None
