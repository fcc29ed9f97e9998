"""The two masks of SR-attn (docs/spec.md §4.4): reading mask_s from a file, resizing masks and maps to a layer,
and mask_t — each word group's region from the stored target maps, once per step (`MaskT`)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from PIL import Image
from torch import Tensor

from model.precision import precise_dtype

from .images import load_image

if TYPE_CHECKING:
    from .p2p import MapStore

KINDS = ("auto", "mask", "alpha", "nonblack", "cutout")


class EmptyMaskError(ValueError):
    """A mask that is empty after resizing and thresholding (§5)."""


def _has_alpha(img: Image.Image) -> bool:
    """True if the image carries an alpha channel or palette transparency."""
    return img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info


def read_mask(source: str | Path | Image.Image, kind: str = "auto", what: str = "mask") -> np.ndarray:
    """Bool [H, W] object mask: mask = gray > 127; alpha = alpha > 0; nonblack = any RGB channel > 0.

    auto: alpha if the image has an alpha channel that is not all 255, else mask.
    cutout (a reference image used as its own mask): alpha if so, else nonblack.
    """
    if kind not in KINDS:
        raise ValueError(f"mask kind must be one of {KINDS}, got {kind!r}")
    # A PIL image read from a file keeps its name (Image.open sets .filename): the message names that file.
    if isinstance(source, Image.Image):
        name = getattr(source, "filename", "") or "(an in-memory image)"
    else:
        name = str(source)
    img = load_image(source, what)  # as a viewer shows it (EXIF orientation, 16-bit, ...)
    alpha = np.asarray(img.convert("RGBA"))[..., 3] if _has_alpha(img) else None
    if kind in ("auto", "cutout"):
        use_alpha = alpha is not None and bool((alpha != 255).any())
        kind = "alpha" if use_alpha else ("mask" if kind == "auto" else "nonblack")
    if kind == "alpha":
        if alpha is None:
            raise ValueError(f"mask {name} has no alpha channel (mode {img.mode}); use kind 'mask' or 'nonblack'")
        out = alpha > 0
    elif kind == "nonblack":
        out = np.asarray(img.convert("RGB")).max(axis=-1) > 0
    else:  # "mask": white = object, a JPEG's ringing near 0 does not count (§4.4)
        out = np.asarray(img.convert("L")) > 127
    if not out.any():
        raise ValueError(f"mask {name} is empty (no object pixels when read as {kind!r})")
    return out


def resize_map(x: torch.Tensor, size: tuple[int, int], interp: str) -> torch.Tensor:
    """[h, w] -> [H, W] with F.interpolate, align_corners=False, no antialiasing (§4.4)."""
    if interp not in ("nearest", "bilinear"):
        raise ValueError(f"interp must be 'nearest' or 'bilinear', got {interp!r}")
    kw = {"align_corners": False} if interp == "bilinear" else {}
    return F.interpolate(x.to(precise_dtype(x.dtype))[None, None], size=tuple(size), mode=interp, **kw)[0, 0]


def resize_mask(mask: torch.Tensor, size: tuple[int, int], interp: str, thres: float) -> torch.Tensor:
    """Bool [h, w]: resize the 0/1 (or probability) mask [H, W] to size, then >= thres."""
    out = resize_map(mask, size, interp) >= thres
    if not bool(out.any()):
        raise EmptyMaskError(f"mask is empty at {tuple(size)} ({interp}, thres {thres})")
    return out


def mask_t_map(map_sum: torch.Tensor, token_indices: list[int]) -> torch.Tensor:
    """The map mask_t thresholds (§4.4): target-word columns of map_sum [h, w, 77] summed, min-max normalised."""
    if not token_indices:
        raise ValueError("mask_t needs at least one target-word token")
    m = map_sum.to(precise_dtype(map_sum.dtype))[..., token_indices].sum(-1)
    if not bool(torch.isfinite(m).all()):
        raise ValueError("mask_t map has non-finite values")
    lo, hi = m.min(), m.max()
    if not bool(hi > lo):
        raise ValueError(f"mask_t map is constant ({float(hi):g} everywhere): the target words have no "
                         "spatial attention, cannot normalise")
    return (m - lo) / (hi - lo)


def mask_t_from_maps(map_sum: torch.Tensor, token_indices: list[int], size: tuple[int, int], interp: str,
                     thres: float) -> torch.Tensor:
    """Bool [H, W] mask_t: mask_t_map resized to size, >= thres (§4.4)."""
    return resize_mask(mask_t_map(map_sum, token_indices), size, interp, thres)


def word_masks(maps: list[Tensor], hw: tuple[int, int], interp: str, thres: float) -> list[Tensor]:
    """mask_t of each word group (bool [H, W]) from its min-max normalised map (mask_t_map): resized and >= thres
    (§4.4). Overlap rule (§8.2): a pixel in several groups' masks goes to the group whose normalised, resized map is
    largest there (ties: the earlier group), so the masks are disjoint and their sum is at most 1."""
    masks = [resize_mask(m, hw, interp, thres) for m in maps]
    if len(masks) == 1:
        return masks
    values = [resize_map(m, hw, interp) for m in maps]
    score = torch.stack([torch.where(m, v, torch.full_like(v, -torch.inf)) for m, v in zip(masks, values)])
    winner = score.argmax(0)  # the first maximum on ties
    return [m & (winner == j) for j, m in enumerate(masks)]


@dataclass(frozen=True)
class MaskTStep:
    """mask_t as computed at one step: each group's normalised map [hm, wm] and mask [h, w] at the latent size."""

    step: int
    maps: list[Tensor]
    masks: list[Tensor]

    @property
    def union(self) -> Tensor:
        """[h, w] bool: every group's region (with one group, its mask_t)."""
        return torch.stack(self.masks).any(0)


class MaskT:
    """mask_t of each word group (§4.4; one group per reference word binding, §8.2) from the stored target maps.

    At a step's first SR layer it reads the maps stored so far (so a step sees the map blocks that ran before that
    layer) and keeps the step's maps; each layer size gets them resized and thresholded (cached per step and size).
    """

    def __init__(self, maps: "MapStore", tokens: list[list[int]], latent_hw: tuple[int, int], interp: str,
                 thres: float):
        self.store, self.tokens, self.latent_hw = maps, tokens, tuple(latent_hw)
        self.interp, self.thres = interp, thres
        self.current: MaskTStep | None = None           # the latest step's maps and latent-size masks
        self._layers: dict[tuple[int, int, int], list[Tensor]] = {}

    def at_layer(self, step: int, hw: tuple[int, int]) -> list[Tensor]:
        """Each group's mask_t at a layer's H x W, flattened [H*W] bool."""
        if (step, *hw) not in self._layers:
            if self.current is None or self.current.step != step:
                self.current = self._at_step(step)
            try:
                masks = word_masks(self.current.maps, hw, self.interp, self.thres)
            except ValueError as e:
                raise type(e)(f"mask_t at step {step}: {e}") from None
            self._layers[(step, *hw)] = [m.flatten() for m in masks]
        return self._layers[(step, *hw)]

    def _at_step(self, step: int) -> MaskTStep:
        if self.store.sum is None:
            raise ValueError(f"mask_t at step {step}: no cross-attention map of the map blocks yet (in the first SR "
                             f"step, SR layers must come after block {min(self.store.map_blocks)}, or start SR-attn "
                             "a step later)")
        try:
            maps = [mask_t_map(self.store.sum[1], t) for t in self.tokens]
            # the outputs' mask_t is at the latent size, even when no SR layer has that size
            return MaskTStep(step, maps, word_masks(maps, self.latent_hw, self.interp, self.thres))
        except ValueError as e:
            raise type(e)(f"mask_t at step {step}: {e}") from None

    def seen(self, step: int) -> MaskTStep | None:
        """mask_t as computed at `step`, if it was (an SR step), else None."""
        return self.current if self.current is not None and self.current.step == step else None
