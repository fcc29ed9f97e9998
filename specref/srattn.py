"""SR-attn (docs/spec.md §4.4): the target's self-attention also attends to the reference object's K/V.

    out_self = softmax(Q Kᵀ·scale) V                        plain self-attention
    out_ref  = softmax(Q K_refᵀ·scale + log mask_s) V_ref      only the reference object's keys
    out      = mask_t · out_ref + (1 − mask_t) · out_self      per query pixel

`sr_attention` is that, the one function the editor (through `SRAttention`) and the demo model's trainer call;
with several references it concatenates their keys (§8.1), with one reference per target word it mixes one
`out_ref` per word group over that group's mask_t (§8.2). Change it here and the editor changes.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from model.attention import MAX_SCORE_ELEMENTS, AttnSite, attention, attention_probs, merge_heads, split_heads

from .masks import EmptyMaskError, resize_mask

if TYPE_CHECKING:
    from .features import ReferenceFeatures
    from .masks import MaskT
    from .references import WordGroup


@dataclass(frozen=True)
class ReferenceKeys:
    """One word group's reference keys and values [B, Nr, C] (its references' tokens concatenated) and mask_s [Nr]
    (or [B, Nr]) bool; mask_s None: every key."""

    k: Tensor
    v: Tensor
    mask_s: Tensor | None = None


def log_mask_bias(mask_s: Tensor, dtype: torch.dtype) -> Tensor:
    """log(mask_s) as an additive score bias: [Nk] -> [1, 1, 1, Nk], [B, Nk] -> [B, 1, 1, Nk]; 0 on object keys,
    -inf elsewhere."""
    rows = mask_s.reshape(-1, mask_s.shape[-1])
    if not bool(rows.any(dim=1).all()):
        raise ValueError("SR-attn: mask_s selects no reference key; every row of the masked softmax would be empty")
    # -inf is exact in bf16/fp16 too, and every row keeps a finite key (checked above): no 0/0 in the softmax.
    bias = torch.zeros(rows.shape, dtype=dtype, device=mask_s.device).masked_fill(~rows.bool(), float("-inf"))
    return bias.reshape(len(rows), 1, 1, -1)


def masked_probs(q: Tensor, k_ref: Tensor, mask_s: Tensor | None) -> Tensor:
    """The masked softmax, explicitly: softmax(Q K_refᵀ·scale + log mask_s) for head-split q [B, H, Nq, d],
    k_ref [B, H, Nr, d] -> [B, H, Nq, Nr]."""
    return attention_probs(q, k_ref.to(q.dtype), None if mask_s is None else log_mask_bias(mask_s, q.dtype))


def reference_attention(q: Tensor, k_ref: Tensor, v_ref: Tensor, heads: int, mask_s: Tensor | None,
                        fused: bool = True, max_scores: int = MAX_SCORE_ELEMENTS) -> Tensor:
    """out_ref [B, Nq, C] = softmax(Q K_refᵀ·scale + log mask_s) V_ref for q [B, Nq, C], k_ref, v_ref [B, Nr, C]."""
    if fused:  # PyTorch's kernel: the same softmax with the same bias, no Nq x Nr map
        bias = None if mask_s is None else log_mask_bias(mask_s, q.dtype)
        return attention(q, k_ref.to(q.dtype), v_ref.to(q.dtype), heads, bias=bias)
    qh, kh, vh = split_heads(q, heads), split_heads(k_ref, heads), split_heads(v_ref.to(q.dtype), heads)
    rows = max(1, max_scores // (qh.shape[0] * heads * kh.shape[2]))  # query chunks: the softmax is per row
    return merge_heads(torch.cat([masked_probs(qh[:, :, i:i + rows], kh, mask_s) @ vh
                                  for i in range(0, qh.shape[2], rows)], dim=2))


def blend_by_mask_t(out_self: Tensor, outs: Sequence[Tensor], masks_t: Sequence[Tensor | None]) -> Tensor:
    """out = Σ_j m_j · out_ref_j + (1 − Σ_j m_j) · out_self per query pixel; masks_t [Nq] or [B, Nq], disjoint
    (§8.2); one group: mask_t · out_ref + (1 − mask_t) · out_self (§4.4). None: 1 everywhere (one group only)."""
    if len(outs) != len(masks_t):
        raise ValueError(f"{len(outs)} reference groups but {len(masks_t)} mask_t")
    if all(m is None for m in masks_t):
        if len(outs) > 1:
            raise ValueError("several reference groups need each one's mask_t to share the target")
        return outs[0]
    if any(m is None for m in masks_t):
        raise ValueError("give every group's mask_t or none")
    ms = [m.to(out_self.dtype).reshape(-1, m.shape[-1], 1) for m in masks_t]
    acc, total = ms[0] * outs[0], ms[0]
    for m, o in zip(ms[1:], outs[1:]):
        acc, total = acc + m * o, total + m
    return acc + (1 - total) * out_self


def sr_attention(q: Tensor, k: Tensor, v: Tensor, refs: Sequence[ReferenceKeys], masks_t: Sequence[Tensor | None],
                 heads: int, fused: bool = True) -> Tensor:
    """SR-attn (§4.4): q, k, v [B, N, C] of the target; one ReferenceKeys and one mask_t ([N] or [B, N], bool or in
    [0, 1]; None = 1 everywhere) per word group (§8.2; §4.4's SR-attn is one group) -> out [B, N, C]."""
    out_self = attention(q, k, v, heads, fused=fused)                                     # plain self-attention
    outs = [reference_attention(q, r.k, r.v, heads, r.mask_s, fused) for r in refs]       # the masked softmax
    return blend_by_mask_t(out_self, outs, masks_t)                                       # mixed by mask_t


def reference_mass(q: Tensor, k_ref: Tensor, heads: int, mask_s: Tensor | None, weights: Tensor | None,
                   max_scores: int = MAX_SCORE_ELEMENTS) -> Tensor:
    """[Nr]: the attention mass each reference key gets in the masked softmax (masked_probs), averaged over heads
    and summed over the queries weighted by `weights` [Nq] (mask_t; None = every query). q [1, Nq, C], k_ref
    [1, Nr, C]. For inspection: a query chunk at a time, nothing attention-sized is kept."""
    qh, kh = split_heads(q, heads), split_heads(k_ref.to(q.dtype), heads)
    w = torch.ones(qh.shape[2], dtype=q.dtype, device=q.device) if weights is None else weights.to(q.dtype).flatten()
    rows = max(1, max_scores // (heads * kh.shape[2]))
    total = torch.zeros(kh.shape[2], dtype=q.dtype, device=q.device)
    for i in range(0, qh.shape[2], rows):
        total += torch.einsum("bhqk,q->k", masked_probs(qh[:, :, i:i + rows], kh, mask_s), w[i:i + rows]) / heads
    return total


class SRAttention:
    """SR-attn in an edit (§4.4): in its blocks and steps, the conditional target's self-attention output is
    `sr_attention` over the kept reference K/V, with mask_s at the layer's size and each word group's mask_t.

    `probe(site, step, change, mass)`, if given, sees what SR-attn changed per query pixel and which reference keys
    its masked softmax drew from (an explicit extra pass, for inspection; the edit is the same with or without).
    """

    def __init__(self, features: "ReferenceFeatures", blocks: range, steps: range, masks_s: Tensor | None,
                 groups: "list[WordGroup]", mask_t: "MaskT | None", interp: str, thres: float, probe=None):
        self.features, self.blocks, self.steps, self.groups = features, blocks, steps, groups
        self.masks_s = masks_s        # [K, H, W] float 0/1 at the working size, one per reference; None: all ones
        self.mask_t, self.interp, self.thres, self.probe = mask_t, interp, thres, probe
        self._mask_s_layer: dict[tuple[int, int], Tensor] = {}

    def active(self, site: AttnSite, step: int | None) -> bool:
        """True in the SR layers at the SR steps."""
        return site.kind == "self" and site.block in self.blocks and step in self.steps

    def mask_s_layer(self, hw: tuple[int, int]) -> Tensor | None:
        """Every reference's mask_s at a layer's H x W, [K, H*W] bool (cached per size); None: all ones."""
        if self.masks_s is None:
            return None
        if hw not in self._mask_s_layer:
            try:
                self._mask_s_layer[hw] = torch.stack([resize_mask(m, hw, self.interp, self.thres).flatten()
                                                      for m in self.masks_s])
            except EmptyMaskError as e:
                raise EmptyMaskError(f"reference mask mask_s is empty at layer size {hw}: {e}") from None
        return self._mask_s_layer[hw]

    def group_keys(self, block: int, step: int, hw: tuple[int, int]) -> list[ReferenceKeys]:
        """Each word group's references' kept K/V and mask_s, concatenated along the tokens: [1, K_g * Nr, C]."""
        k_ref, v_ref = self.features.kv[(block, step)]  # [K, Nr, C]
        mask_s = self.mask_s_layer(hw)
        out = []
        for g in self.groups:
            ix = list(g.refs)
            kg, vg = (k_ref, v_ref) if ix == list(range(len(k_ref))) else (k_ref[ix], v_ref[ix])
            out.append(ReferenceKeys(kg.reshape(1, -1, kg.shape[-1]), vg.reshape(1, -1, vg.shape[-1]),
                                     None if mask_s is None else mask_s[ix].flatten()))
        return out

    def __call__(self, site: AttnSite, step: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """The layer's output for the batch [u_src, u_tgt, c_src, c_tgt]: SR-attn for c_tgt, plain for the rest."""
        hw, tgt = (site.height, site.width), slice(3, 4)  # c_tgt is the last element
        refs = self.group_keys(site.block, step, hw)
        masks_t = [None] * len(self.groups) if self.mask_t is None else self.mask_t.at_layer(step, hw)
        target = sr_attention(q[tgt], k[tgt], v[tgt], refs, masks_t, site.heads)  # the method, one call
        if self.probe is not None:
            self._inspect(site, step, q[tgt], k[tgt], v[tgt], refs, masks_t, target)
        others = attention(q[:3], k[:3], v[:3], site.heads)  # the rest: plain self-attention
        return torch.cat([others, target])

    def _inspect(self, site: AttnSite, step: int, q: Tensor, k: Tensor, v: Tensor, refs: list[ReferenceKeys],
                 masks_t: list[Tensor | None], target: Tensor) -> None:
        out_self = attention(q, k, v, site.heads)
        k_ref = self.features.kv[(site.block, step)][0]
        mass = torch.zeros(k_ref.shape[:2], dtype=q.dtype, device=q.device)  # [K, Nr]
        for g, r, mt in zip(self.groups, refs, masks_t):
            mass[list(g.refs)] = reference_mass(q, r.k, site.heads, r.mask_s, mt).reshape(len(g.refs), -1)
        self.probe(site, step, (target - out_self)[0].abs().mean(-1), mass)
