"""The attention hooks of the method: reference K/V capture (SPEC §3) and the edit controller (SPEC §4).

The edit batch is [u_src, u_tgt, c_src, c_tgt] (SPEC §4); P2P and SR-attn touch only the conditional
target (index 3), reading the conditional source (index 2).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from model.attention import AttentionHook, AttnSite, attention
from model.precision import precise_dtype

from .blend import apply_blend, local_blend_mask
from .config import BLEND_BLOCKS
from .masks import EmptyMaskError, mask_t_map, resize_mask
from .p2p import edit_cross
from .references import Group, word_masks
from .srattn import blend_by_mask_t, reference_attention, reference_mass

SRC, TGT = 2, 3  # conditional source / target in the edit batch (TGT is the last element)


class ReferenceFeatures(AttentionHook):
    """Stage 1 (SPEC §3): K, V of the reference elements, only in the SR layers at the steps SR-attn will use.

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
        edit_step = self.num_steps - 1 - step  # editing step i uses inversion step N-1-i: the same timestep
        if edit_step in self.steps:
            i, dt = self._take, self.dtype or k.dtype
            self.kv[(site.block, edit_step)] = (k[i].to(dt, copy=True), v[i].to(dt, copy=True))

    def nbytes(self) -> int:
        """Memory held by the kept features."""
        return sum(k.numel() * k.element_size() * 2 for k, _ in self.kv.values())


class EditObserver:
    """Sees what stage 2 computes, step by step (`--inspect`, `--trace`); every method defaults to nothing.

    It only reads: the edit is the same with or without one.
    """

    def on_step(self, step: int, t: int, x_in: Tensor, eps: Tensor, x_out: Tensor) -> None:
        """After step `step`'s DDIM update and Local Blend: x_in, x_out [2, 4, h, w] ([reconstruction, edit]);
        eps [4, 4, h, w], the guided batch's noise predictions [u_src, u_tgt, c_src, c_tgt]."""

    def on_blend(self, step: int, mask: Tensor) -> None:
        """The Local Blend mask [h, w] (0/1 at the latent size) that acted at `step`."""

    def on_mask_t(self, step: int, norm_map: Tensor, mask: Tensor) -> None:
        """mask_t of SR step `step`: its min-max normalised map [hm, wm] (map blocks' size) and the thresholded
        mask [h, w] (bool, latent size)."""

    def wants_sr(self) -> bool:
        """True to get on_sr calls (they cost an explicit pass over the reference keys)."""
        return False

    def on_sr(self, site: AttnSite, step: int, change: Tensor, ref_mass: Tensor) -> None:
        """An SR-attn layer of the target: change [Nq] = mean |out - out_self| over channels per query pixel;
        ref_mass [Nr] = the masked softmax's mass per reference key, summed over mask_t's queries."""

    def on_finish(self, maps: Tensor | None) -> None:
        """After the last step: the map blocks' maps [2, hm, wm, 77] (cond source, target), summed over steps."""


@dataclass
class P2PPlan:
    """Prompt-to-Prompt settings resolved to tensors (SPEC §4.1, §4.3)."""

    alpha: Tensor                                   # [N+1, 77] word-time weights of the cross-attention edit
    self_range: tuple[int, int]                     # steps where the target takes the source's self-attention
    replace: Tensor | None = None                   # Replace mapper [77, 77]
    refine: tuple[Tensor, Tensor] | None = None     # Refine (mapper, alphas)
    equalizer: Tensor | None = None                 # Reweight factors [77]
    blend_words: Tensor | None = None               # [2, 77] 0/1, Local Blend words per prompt
    substruct_words: Tensor | None = None           # [2, 77] 0/1
    blend_th: tuple[float, float] = (0.3, 0.3)
    blend_start: int = 10                           # first step index that blends
    map_blocks: tuple[int, ...] = BLEND_BLOCKS      # cross-attention layers whose maps are stored (one map size)

    def to(self, device: torch.device | str, dtype: torch.dtype = torch.float32) -> "P2PPlan":
        """Move every tensor to `device`; float tensors to `dtype` (the model's precise dtype)."""
        move = lambda t: (t.to(device, dtype) if t.is_floating_point() else t.to(device)) if isinstance(t, Tensor) else t  # noqa: E731
        for f in ("alpha", "replace", "equalizer", "blend_words", "substruct_words"):
            setattr(self, f, move(getattr(self, f)))
        if self.refine is not None:
            self.refine = (move(self.refine[0]), move(self.refine[1]))
        return self


@dataclass
class SRPlan:
    """SR-attn settings (SPEC §4.4)."""

    features: ReferenceFeatures
    blocks: range
    steps: range
    mask_s: Tensor | None         # [H, W] (or [K, H, W]: K references) float 0/1 at the working size, None = all ones
    target_tokens: list[int] | None  # token positions of the target words for mask_t, None = mask_t all ones
    thres: float = 0.5
    interp: str = "bilinear"
    groups: list[Group] | None = None  # per target-word references; None: one group of all, on target_tokens

    def __post_init__(self) -> None:
        if self.groups is None:
            k = 1 if self.mask_s is None or self.mask_s.ndim == 2 else self.mask_s.shape[0]
            self.groups = [Group((), tuple(range(k)), self.target_tokens)]


class EditController(AttentionHook):
    """P2P edit of the conditional target, the blend-level map store, Local Blend and SR-attn."""

    def __init__(self, p2p: P2PPlan, sr: SRPlan | None, latent_hw: tuple[int, int],
                 observer: EditObserver | None = None):
        self.p2p, self.sr, self.latent_hw, self.observer = p2p, sr, latent_hw, observer
        self.max_self_pixels = (latent_hw[0] // 2) * (latent_hw[1] // 2)  # "≤ 32²" at a 64² latent
        self.map_sum: Tensor | None = None  # [2, h, w, 77]: cond src/tgt maps, heads averaged, summed over layers+steps
        self._mask_s: dict[tuple[int, int], Tensor] = {}
        self._mask_t: dict[tuple[int, int, int], Tensor] = {}
        self._maps_t: tuple[int, list[Tensor]] | None = None  # (step, each group's normalised mask_t map)
        self.last_mask_t: Tensor | None = None  # at the latent size, for outputs (the union of the groups')
        self.last_masks_t: list[Tensor] = []    # each word group's mask_t at the latent size
        self.last_blend: Tensor | None = None   # the Local Blend mask [h, w] of the last step that blended

    # ---- SR-attn (SPEC §4.4) -----------------------------------------------------------------
    def sr_active(self, site: AttnSite, step: int | None) -> bool:
        sr = self.sr
        return sr is not None and site.kind == "self" and site.block in sr.blocks and step in sr.steps

    def mask_s(self, hw: tuple[int, int]) -> Tensor | None:
        """mask_s of every reference at a layer's H×W, [K, H*W] (cached per size)."""
        if self.sr.mask_s is None:
            return None
        if hw not in self._mask_s:
            masks = self.sr.mask_s.reshape(-1, *self.sr.mask_s.shape[-2:])
            try:
                self._mask_s[hw] = torch.stack([resize_mask(m, hw, self.sr.interp, self.sr.thres).flatten()
                                                for m in masks])
            except EmptyMaskError as e:
                raise EmptyMaskError(f"reference mask mask_s is empty at layer size {hw}: {e}") from None
        return self._mask_s[hw]

    def mask_t(self, step: int, hw: tuple[int, int]) -> list[Tensor | None]:
        """Each group's mask_t at a layer's H×W from the mean of every blend-level target map so far (cached per
        step and size); one group: SPEC §4.4's mask_t."""
        groups = self.sr.groups
        if groups[0].tokens is None:
            return [None] * len(groups)
        if (step, *hw) not in self._mask_t:
            if self.map_sum is None:
                raise ValueError(f"mask_t at step {step}: no cross-attention map of the map blocks yet (in the first "
                                 f"SR step, SR layers must come after block {min(self.p2p.map_blocks)}, or start "
                                 f"SR-attn a step later)")
            sr, tokens = self.sr, [g.tokens for g in groups]
            try:
                if self._maps_t is None or self._maps_t[0] != step:  # the step's first SR layer: its maps, once
                    self._maps_t = (step, [mask_t_map(self.map_sum[1], t) for t in tokens])
                    # the output's mask_t is at the latent size, even when no SR layer has that size
                    self.last_masks_t = word_masks(self._maps_t[1], self.latent_hw, sr.interp, sr.thres)
                    self.last_mask_t = torch.stack(self.last_masks_t).any(0)
                    if self.observer is not None:
                        self.observer.on_mask_t(step, torch.stack(self._maps_t[1]).amax(0), self.last_mask_t)
                ms = word_masks(self._maps_t[1], hw, sr.interp, sr.thres)
            except ValueError as e:
                raise type(e)(f"mask_t at step {step}: {e}") from None
            self._mask_t[(step, *hw)] = [m.flatten() for m in ms]
        return self._mask_t[(step, *hw)]

    @staticmethod
    def group_keys(g: Group, k_ref: Tensor, v_ref: Tensor, mask_s: Tensor | None) -> tuple[Tensor, Tensor, Tensor | None]:
        """A group's references' keys, values and mask_s concatenated along the tokens: [1, K_g*Nr, C] (issue 19)."""
        ix = list(g.refs)
        kg, vg = (k_ref, v_ref) if ix == list(range(len(k_ref))) else (k_ref[ix], v_ref[ix])
        return (kg.reshape(1, -1, kg.shape[-1]), vg.reshape(1, -1, vg.shape[-1]),
                None if mask_s is None else mask_s[ix].flatten())

    def replace_output(self, site: AttnSite, step: int | None, q: Tensor, k: Tensor, v: Tensor) -> Tensor | None:
        if not self.sr_active(site, step):
            return None
        hw = (site.height, site.width)
        k_ref, v_ref = self.sr.features.kv[(site.block, step)]  # [K, Nr, C]
        mask_s, masks_t, t = self.mask_s(hw), self.mask_t(step, hw), slice(TGT, TGT + 1)
        out_self = attention(q[t], k[t], v[t], site.heads)      # plain self-attention
        refs = [self.group_keys(g, k_ref, v_ref, mask_s) for g in self.sr.groups]
        outs = [reference_attention(q[t], kg, vg, site.heads, ms) for kg, vg, ms in refs]
        target = blend_by_mask_t(out_self, outs, masks_t)
        if self.observer is not None and self.observer.wants_sr():  # inspection: what changed, drawn from where
            mass = torch.zeros(k_ref.shape[:2], dtype=q.dtype, device=q.device)  # [K, Nr]
            for g, (kg, _, ms), mt in zip(self.sr.groups, refs, masks_t):
                mass[list(g.refs)] = reference_mass(q[t], kg, site.heads, ms, mt).reshape(len(g.refs), -1)
            self.observer.on_sr(site, step, (target - out_self)[0].abs().mean(-1), mass)
        others = attention(q[:TGT], k[:TGT], v[:TGT], site.heads)  # the rest: plain self-attention (TGT is last)
        return torch.cat([others, target])

    # ---- Prompt-to-Prompt (SPEC §4.1) ----------------------------------------------------------
    def self_replace(self, site: AttnSite, step: int | None) -> bool:
        a, b = self.p2p.self_range
        return a <= step < b and site.height * site.width <= self.max_self_pixels

    def needs_probs(self, site: AttnSite, step: int | None) -> bool:
        if site.kind == "cross":
            return site.block in self.p2p.map_blocks or bool(self.p2p.alpha[step].any())
        return self.self_replace(site, step)

    def edit_probs(self, site: AttnSite, step: int | None, probs: Tensor) -> Tensor:
        if site.kind == "self":
            probs[TGT] = probs[SRC]  # the target takes the source's self-attention
            return probs
        p, dt = self.p2p, precise_dtype(probs.dtype)  # the edit runs in float32 (as the reference does) or float64
        edited = edit_cross(probs[SRC].to(dt), probs[TGT].to(dt), p.alpha[step], p.replace, p.refine, p.equalizer)
        probs[TGT] = edited.to(probs.dtype)
        if site.block in p.map_blocks:  # stored after the edit (SPEC §4.1)
            maps = probs[SRC:].to(dt).mean(1).reshape(2, site.height, site.width, -1)
            self.map_sum = maps if self.map_sum is None else self.map_sum + maps
        return probs

    # ---- Local Blend (SPEC §4.3), after the DDIM step -------------------------------------------
    def local_blend(self, step: int, x: Tensor) -> Tensor:
        """x = [x_src, x_tgt]; returns the pair with x_tgt blended from step blend_start on."""
        p = self.p2p
        if p.blend_words is None or step < p.blend_start:
            return x
        mask = local_blend_mask(self.map_sum[:, None], p.blend_words, tuple(x.shape[-2:]), p.blend_th, p.substruct_words)
        self.last_blend = mask[0, 0]
        if self.observer is not None:
            self.observer.on_blend(step, mask[0, 0])
        return torch.stack([x[0], apply_blend(x[0], x[1], mask.to(x)[0])])
