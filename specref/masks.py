"""Reference mask reading and the mask / map resizes of SR-attn (SPEC §4.4, §5)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from model.precision import precise_dtype
from PIL import Image, UnidentifiedImageError

KINDS = ("auto", "mask", "alpha", "nonblack", "cutout")


class EmptyMaskError(ValueError):
    """A mask that is empty after resizing and thresholding (SPEC §5)."""


def _has_alpha(img: Image.Image) -> bool:
    """True if the image carries an alpha channel or palette transparency."""
    return img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info


def read_mask(source: str | Path | Image.Image, kind: str = "auto") -> np.ndarray:
    """Bool [H, W] object mask: mask = gray > 127; alpha = alpha > 0; nonblack = any RGB channel > 0.

    auto: alpha if the image has an alpha channel that is not all 255, else mask.
    cutout (a reference image used as its own mask): alpha if so, else nonblack.
    """
    if kind not in KINDS:
        raise ValueError(f"mask kind must be one of {KINDS}, got {kind!r}")
    # A PIL image read from a file keeps its name (Image.open sets .filename): the message names that file.
    name = (getattr(source, "filename", "") or "(an in-memory image)") if isinstance(source, Image.Image) else str(source)
    if isinstance(source, Image.Image):
        img = source
    else:
        try:
            img = Image.open(source)
            img.load()
        except (OSError, UnidentifiedImageError) as err:
            raise ValueError(f"cannot read the mask file {name}: {err}") from err
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
    else:  # "mask": white = object, a JPEG's ringing near 0 does not count (SPEC §4.4)
        out = np.asarray(img.convert("L")) > 127
    if not out.any():
        raise ValueError(f"mask {name} is empty (no object pixels when read as {kind!r})")
    return out


def _resize(x: torch.Tensor, size: tuple[int, int], interp: str) -> torch.Tensor:
    """[h, w] -> [H, W] with F.interpolate, align_corners=False, no antialiasing (SPEC §4.4)."""
    if interp not in ("nearest", "bilinear"):
        raise ValueError(f"interp must be 'nearest' or 'bilinear', got {interp!r}")
    kw = {"align_corners": False} if interp == "bilinear" else {}
    return F.interpolate(x.to(precise_dtype(x.dtype))[None, None], size=tuple(size), mode=interp, **kw)[0, 0]


def resize_mask(mask: torch.Tensor, size: tuple[int, int], interp: str, thres: float) -> torch.Tensor:
    """Bool [h, w]: resize the 0/1 (or probability) mask [H, W] to size, then >= thres."""
    out = _resize(mask, size, interp) >= thres
    if not bool(out.any()):
        raise EmptyMaskError(f"mask is empty at {tuple(size)} ({interp}, thres {thres})")
    return out


def mask_t_map(map_sum: torch.Tensor, token_indices: list[int]) -> torch.Tensor:
    """The map mask_t thresholds (SPEC §4.4): target-word columns of map_sum [h, w, 77] summed, min-max normalised."""
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


def mask_t_from_maps(map_sum: torch.Tensor, token_indices: list[int], size: tuple[int, int], interp: str, thres: float) -> torch.Tensor:
    """Bool [H, W] mask_t: mask_t_map resized to size, >= thres (SPEC §4.4)."""
    return resize_mask(mask_t_map(map_sum, token_indices), size, interp, thres)
