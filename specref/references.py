"""References as users have them: several views of one object, one reference per target word, and mask_s
found by the reference's own cross-attention during stage 1 (extends SPEC §3 and §4.4; all off by default).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from model.attention import AttentionHook, AttnSite
from model.precision import precise_dtype

from .masks import _resize, mask_t_from_maps, resize_mask

AUTO = "auto"  # a Reference's mask: found from the reference's cross-attention to its words (stage 1)


@dataclass(frozen=True)
class Reference:
    """A reference image, its object mask and the target words whose region takes it.

    mask: a mask image / file (white = object, or RGBA alpha), a bool array, None (the image's non-black /
    alpha > 0 pixels, SPEC §4.4) or "auto". words: target-prompt words (`--for`); () = the edit's target words.
    prompt / mask_words: the prompt it is inverted with and the words of that prompt an auto mask reads
    (None: the config's reference_prompt / reference_words).
    """

    image: str | Path | Image.Image
    mask: str | Path | Image.Image | np.ndarray | None = None
    words: tuple[str, ...] = ()
    prompt: str | None = None
    mask_words: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        for name in ("words", "mask_words"):
            value = getattr(self, name)
            if isinstance(value, str):
                object.__setattr__(self, name, (value,))
            elif value is not None:
                object.__setattr__(self, name, tuple(value))

    @property
    def auto(self) -> bool:
        """True if mask_s comes from the reference's cross-attention."""
        return isinstance(self.mask, str) and self.mask == AUTO


@dataclass(frozen=True)
class Group:
    """Target words whose own mask_t region takes the references `refs` (indices into the reference list)."""

    words: tuple[str, ...]
    refs: tuple[int, ...]
    tokens: list[int] | None = None     # target-prompt token positions of `words` (None: mask_t all ones)


def as_references(reference, mask=None) -> list[Reference]:
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


def resolve_groups(cfg, refs: list[Reference]) -> tuple[tuple[str, ...], list[Group]]:
    """(target words, groups). No `--for`: one group of every reference on the target words (SPEC §4.4).
    Otherwise one group per distinct word binding; references bound to the same words are views of one object."""
    if not any(r.words for r in refs):
        return tuple(cfg.target_words), [Group(tuple(cfg.target_words), tuple(range(len(refs))))]
    if not all(r.words for r in refs):
        raise ValueError("bind every reference to target words (--for WORD after each --reference) or none")
    groups: dict[tuple[str, ...], list[int]] = {}
    owner: dict[str, tuple[str, ...]] = {}
    for i, r in enumerate(refs):
        if len(set(r.words)) != len(r.words):
            raise ValueError(f"reference {i + 1} is bound to the same word twice: {', '.join(r.words)}")
        for w in r.words:
            if owner.setdefault(w, r.words) != r.words:
                raise ValueError(f"target word {w!r} is bound twice, to '{','.join(owner[w])}' and "
                                 f"'{','.join(r.words)}': a word can have one region; bind several views of one "
                                 f"object with the same --for words")
        groups.setdefault(r.words, []).append(i)
    words = tuple(w for ws in groups for w in ws)
    return words, [Group(ws, tuple(ix)) for ws, ix in groups.items()]


def stage1_extra(cfg, refs: list[Reference] | None) -> tuple:
    """What stage 1 depends on in the references besides their images: () for one plain reference (so that
    stage1_key(cfg) is unchanged); else the count, each one's prompt override and auto flag, and the map blocks
    the auto masks read. Mask words and thresholds are stage 2: the inversion keeps every token's map."""
    if not refs or (len(refs) == 1 and refs[0].prompt is None and not refs[0].auto):
        return ()
    auto = tuple(cfg.map_blocks) if any(r.auto for r in refs) else None
    return (tuple((r.prompt, r.auto) for r in refs), auto)


def auto_mask_s(maps: Tensor, tokens: list[int], hw: tuple[int, int], interp: str, thres: float,
                name: str = "reference") -> np.ndarray:
    """Bool [H, W] mask_s from a reference's summed cross-attention maps [h, w, 77]: its words' columns summed,
    min-max normalised, resized and >= thres, as mask_t is (SPEC §4.4)."""
    try:
        return mask_t_from_maps(maps, tokens, hw, interp, thres).cpu().numpy()
    except ValueError as e:
        raise ValueError(f"auto mask_s of {name} selects nothing ({e}): lower --reference-thres, use other "
                         f"--reference-words, or give a mask file") from None


def word_masks(maps: list[Tensor], hw: tuple[int, int], interp: str, thres: float) -> list[Tensor]:
    """mask_t of each word group (bool [H, W]) from its min-max normalised target map (masks.mask_t_map): resized
    and >= thres, as SPEC §4.4's mask_t.

    Overlap rule: a pixel in several groups' masks goes to the group whose normalised, resized map is largest
    there (ties: the earlier group), so the masks are disjoint and Σ_j m_j <= 1.
    """
    masks = [resize_mask(m, hw, interp, thres) for m in maps]
    if len(masks) == 1:
        return masks
    values = [_resize(m, hw, interp) for m in maps]
    score = torch.stack([torch.where(m, v, torch.full_like(v, -torch.inf)) for m, v in zip(masks, values)])
    winner = score.argmax(0)  # the first maximum on ties
    return [m & (winner == j) for j, m in enumerate(masks)]


class StageOneHook(AttentionHook):
    """Stage 1's reader: the reference K/V keeper (`features`) and, for auto masks, the map blocks' cross-attention
    maps of the reference elements (batch `indices`), heads averaged, summed over layers and inversion steps."""

    def __init__(self, features: AttentionHook, map_blocks: tuple[int, ...], indices: list[int]):
        self.features, self.map_blocks, self.indices = features, tuple(map_blocks), list(indices)
        self.map_sum: Tensor | None = None  # [K, h, w, 77]

    def on_qkv(self, site: AttnSite, step: int | None, q: Tensor, k: Tensor, v: Tensor) -> None:
        self.features.on_qkv(site, step, q, k, v)

    def needs_probs(self, site: AttnSite, step: int | None) -> bool:
        return site.kind == "cross" and site.block in self.map_blocks

    def edit_probs(self, site: AttnSite, step: int | None, probs: Tensor) -> Tensor:
        maps = probs[self.indices].to(precise_dtype(probs.dtype)).mean(1)
        maps = maps.reshape(len(self.indices), site.height, site.width, -1)
        self.map_sum = maps if self.map_sum is None else self.map_sum + maps
        return probs
