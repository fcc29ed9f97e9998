"""Local Blend (from Prompt-to-Prompt): the edit region from the blend words' cross-attention (SPEC §4.3)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from model.precision import precise_dtype


def blend_start(num_steps: int, start_blend: float = 0.2) -> int:
    """First step index that blends: step i blends when i + 1 > int(start_blend * N)."""
    return int(start_blend * num_steps)


def _prompt_masks(maps: torch.Tensor, words: torch.Tensor, latent_hw: tuple[int, int], th: float, pool: bool, what: str) -> torch.Tensor:
    """Per prompt [P, 1, H, W] bool: weight by words, sum tokens, mean over L, (pool), resize, / max, > th."""
    m = (maps * words[:, None, None, None, :]).sum(-1).mean(1)[:, None]  # [P, 1, h, w]
    if pool:
        m = F.max_pool2d(m, (3, 3), (1, 1), padding=(1, 1))
    m = F.interpolate(m, size=tuple(latent_hw))  # nearest (SPEC §4.3)
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
        raise ValueError(f"Local Blend expects maps [2, L, h, w, T] and words [2, T], got {tuple(maps.shape)}, {tuple(words.shape)}")
    maps = maps.to(precise_dtype(maps.dtype))
    mask = _prompt_masks(maps, words.to(maps), latent_hw, th[0], True, "blend").any(0, keepdim=True)
    if substruct is not None:
        sub = _prompt_masks(maps, substruct.to(maps), latent_hw, th[1], False, "substruct").any(0, keepdim=True)
        mask = mask & ~sub
    return mask.to(maps.dtype)


def apply_blend(x_src: torch.Tensor, x_tgt: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """x_tgt' = x_src + mask * (x_tgt - x_src)."""
    return x_src + mask * (x_tgt - x_src)
