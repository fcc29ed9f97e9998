"""Local Blend (from Prompt-to-Prompt, docs/spec.md §4.3): after each DDIM step, outside the blend words' region the
edit latent is reset to the reconstruction latent."""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from model.precision import precise_dtype

if TYPE_CHECKING:
    from .p2p import MapStore, P2PPlan


def blend_start(num_steps: int, start_blend: float = 0.2) -> int:
    """First step index that blends: step i blends when i + 1 > int(start_blend * N)."""
    return int(start_blend * num_steps)


def _prompt_masks(maps: torch.Tensor, words: torch.Tensor, latent_hw: tuple[int, int], th: float, pool: bool,
                  what: str) -> torch.Tensor:
    """Per prompt [P, 1, H, W] bool: weight by words, sum tokens, mean over L, (pool), resize, / max, > th."""
    m = (maps * words[:, None, None, None, :]).sum(-1).mean(1)[:, None]  # [P, 1, h, w]
    if pool:
        m = F.max_pool2d(m, (3, 3), (1, 1), padding=(1, 1))
    m = F.interpolate(m, size=tuple(latent_hw))  # nearest (§4.3)
    peak = m.amax(dim=(2, 3), keepdim=True)
    if bool((peak <= 0).any()):
        raise ValueError(f"Local Blend: the {what} words have no cross-attention in prompt(s) "
                         f"{[k for k in range(len(peak)) if peak[k] <= 0]} (map max is 0)")
    return (m / peak) > th


def local_blend_mask(
    maps: torch.Tensor,
    words: torch.Tensor,
    latent_hw: tuple[int, int],
    th: tuple[float, float] = (0.3, 0.3),
    substruct: torch.Tensor | None = None,
) -> torch.Tensor:
    """Float 0/1 [1, 1, H, W] blend mask of the target from maps [P=2, L, h, w, 77] summed over steps so far."""
    if maps.dim() != 5 or maps.shape[0] != 2 or words.shape != (2, maps.shape[-1]):
        raise ValueError(f"Local Blend expects maps [2, L, h, w, T] and words [2, T], got {tuple(maps.shape)}, "
                         f"{tuple(words.shape)}")
    maps = maps.to(precise_dtype(maps.dtype))
    mask = _prompt_masks(maps, words.to(maps), latent_hw, th[0], True, "blend").any(0, keepdim=True)
    if substruct is not None:
        sub = _prompt_masks(maps, substruct.to(maps), latent_hw, th[1], False, "substruct").any(0, keepdim=True)
        mask = mask & ~sub
    return mask.to(maps.dtype)


def apply_blend(x_src: torch.Tensor, x_tgt: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """x_tgt' = x_src + mask * (x_tgt - x_src)."""
    return x_src + mask * (x_tgt - x_src)


class LocalBlend:
    """Local Blend in the loop (§4.3): `blend(step, x)` -> (x with x_tgt blended, the mask [h, w] or None)."""

    def __init__(self, plan: "P2PPlan", maps: "MapStore"):
        self.plan, self.maps = plan, maps

    def __call__(self, step: int, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """x = [x_src, x_tgt] after the DDIM step; from the plan's blend start on, x_tgt keeps only the region."""
        p = self.plan
        if p.blend_words is None or step < p.blend_start:
            return x, None
        mask = local_blend_mask(self.maps.sum[:, None], p.blend_words, tuple(x.shape[-2:]), p.blend_th,
                                p.substruct_words)
        return torch.stack([x[0], apply_blend(x[0], x[1], mask.to(x)[0])]), mask[0, 0]
