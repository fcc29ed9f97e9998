"""What stage 1 keeps (docs/spec.md §3): the reference's self-attention K/V in the SR layers at the SR steps, and
for an 'auto' mask_s (§8.3) the reference's own cross-attention maps."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from model.attention import AttentionHook, AttnSite
from model.precision import precise_dtype


class ReferenceFeatures(AttentionHook):
    """K, V of the reference elements, only in the SR layers at the steps SR-attn will use (§3, §5).

    `index`: the batch index of the reference, or the indices of K references (kept as [K, N, C], so the
    memory grows linearly with K).
    """

    def __init__(self, num_steps: int, blocks: range | set[int], steps: range | set[int],
                 index: int | Sequence[int] = 1, dtype: torch.dtype | None = None):
        self.num_steps, self.blocks, self.steps, self.index, self.dtype = num_steps, blocks, steps, index, dtype
        ix = [index] if isinstance(index, int) else list(index)
        # contiguous indices (the editor's [src, ref_1..ref_K]) are a slice: one copy, no gather
        self._take = slice(ix[0], ix[-1] + 1) if ix == list(range(ix[0], ix[-1] + 1)) else ix
        self.kv: dict[tuple[int, int], tuple[Tensor, Tensor]] = {}

    def on_qkv(self, site: AttnSite, step: int | None, q: Tensor, k: Tensor, v: Tensor) -> None:
        if site.kind != "self" or site.block not in self.blocks:
            return
        edit_step = self.num_steps - 1 - step  # editing step i uses inversion step N-1-i: the same timestep (§3)
        if edit_step in self.steps:
            i, dt = self._take, self.dtype or k.dtype
            self.kv[(site.block, edit_step)] = (k[i].to(dt, copy=True), v[i].to(dt, copy=True))

    def nbytes(self) -> int:
        """Memory held by the kept features."""
        return sum(k.numel() * k.element_size() * 2 for k, _ in self.kv.values())


class StageOneHook(AttentionHook):
    """Stage 1's reader with an auto mask_s (§8.3): the K/V keeper (`features`) and the map blocks' cross-attention
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
