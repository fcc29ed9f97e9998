"""SR-attn: the target's self-attention also attends to the reference object's K/V (SPEC §4.4).

`sr_attention` is SPEC §4.4 for one reference; `sr_attention_groups` extends it to several references (their
keys concatenated) and to one reference group per target word (issue 19). Both are `reference_attention`
(the masked softmax) and `blend_by_mask_t` (the per-pixel mix), the two steps the editor calls itself.
"""
from __future__ import annotations

import torch
from torch import Tensor

from model.attention import MAX_SCORE_ELEMENTS, attention, attention_probs, split_heads


def log_mask_bias(mask_s: Tensor, dtype: torch.dtype) -> Tensor:
    """log(mask_s) as an additive score bias: [Nk] -> [1, 1, 1, Nk], [B, Nk] -> [B, 1, 1, Nk]; 0 on object keys,
    -inf elsewhere."""
    rows = mask_s.reshape(-1, mask_s.shape[-1])
    if not bool(rows.any(dim=1).all()):
        raise ValueError("SR-attn: mask_s selects no reference key; every row of the masked softmax would be empty")
    # -inf is exact in bf16/fp16 too, and every row keeps a finite key (checked above): no 0/0 in the softmax.
    bias = torch.zeros(rows.shape, dtype=dtype, device=mask_s.device).masked_fill(~rows.bool(), float("-inf"))
    return bias.reshape(len(rows), 1, 1, -1)


def reference_attention(q: Tensor, k_ref: Tensor, v_ref: Tensor, heads: int, mask_s: Tensor | None,
                        fused: bool = True) -> Tensor:
    """out_ref = softmax(Q K_refᵀ·scale + log mask_s) V_ref: the target's queries over the reference object's keys
    only (SPEC §4.4). Several references: their keys, values and masks concatenated along the tokens."""
    bias = None if mask_s is None else log_mask_bias(mask_s, q.dtype)
    return attention(q, k_ref.to(q.dtype), v_ref.to(q.dtype), heads, bias=bias, fused=fused)


def blend_by_mask_t(out_self: Tensor, outs: list[Tensor], masks_t: list[Tensor | None]) -> Tensor:
    """out = Σ_j m_j · out_ref_j + (1 − Σ_j m_j) · out_self per query pixel (SPEC §4.4 for one group:
    mask_t · out_ref + (1 − mask_t) · out_self); masks_t [N] or [B, N], disjoint; None: 1 everywhere (one group)."""
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


def sr_attention_groups(q: Tensor, k: Tensor, v: Tensor, refs: list[tuple[Tensor, Tensor, Tensor | None]],
                        masks_t: list[Tensor | None], heads: int, fused: bool = True) -> Tensor:
    """SR-attn with one reference group per target-word region (extends SPEC §4.4): refs are (k_ref [B, Nr, C],
    v_ref, mask_s [Nr] or None) per group, keys of a group's references concatenated; one group = sr_attention."""
    out_self = attention(q, k, v, heads, fused=fused)                          # plain self-attention
    outs = [reference_attention(q, kr, vr, heads, ms, fused) for kr, vr, ms in refs]
    return blend_by_mask_t(out_self, outs, masks_t)


def sr_attention(q: Tensor, k: Tensor, v: Tensor, k_ref: Tensor, v_ref: Tensor, heads: int,
                 mask_s: Tensor | None, mask_t: Tensor | None, fused: bool = True) -> Tensor:
    """SPEC §4.4: q, k, v [B, N, C]; k_ref, v_ref [B, Nr, C]; mask_s [Nr] or [B, Nr] (bool), mask_t [N] or [B, N]
    (bool or in [0, 1]); a mask of None is 1 everywhere. The editor calls it with B = 1 (the target element)."""
    return sr_attention_groups(q, k, v, [(k_ref, v_ref, mask_s)], [mask_t], heads, fused)


def reference_mass(q: Tensor, k_ref: Tensor, heads: int, mask_s: Tensor | None, weights: Tensor | None,
                   max_scores: int = MAX_SCORE_ELEMENTS) -> Tensor:
    """[Nr]: the attention mass each reference key gets in SR-attn's masked softmax, averaged over heads and
    summed over the queries weighted by `weights` [Nq] (mask_t; None = every query). q [1, Nq, C], k_ref [1, Nr, C].

    For inspection: the probabilities are computed explicitly, a query chunk at a time (nothing attention-sized
    is kept).
    """
    qh, kh = split_heads(q, heads), split_heads(k_ref.to(q.dtype), heads)
    bias = None if mask_s is None else log_mask_bias(mask_s, q.dtype)
    w = torch.ones(qh.shape[2], dtype=q.dtype, device=q.device) if weights is None else weights.to(q.dtype).flatten()
    rows = max(1, max_scores // (heads * kh.shape[2]))
    total = torch.zeros(kh.shape[2], dtype=q.dtype, device=q.device)
    for i in range(0, qh.shape[2], rows):
        total += torch.einsum("bhqk,q->k", attention_probs(qh[:, :, i:i + rows], kh, bias), w[i:i + rows]) / heads
    return total
