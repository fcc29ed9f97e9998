"""SR-attn: the target's self-attention also attends to the reference object's K/V (SPEC §4.4)."""
from __future__ import annotations

import torch
from torch import Tensor

from model.attention import attention


def log_mask_bias(mask_s: Tensor, dtype: torch.dtype) -> Tensor:
    """log(mask_s) as an additive score bias: [Nk] -> [1, 1, 1, Nk], [B, Nk] -> [B, 1, 1, Nk]; 0 on object keys,
    -inf elsewhere."""
    rows = mask_s.reshape(-1, mask_s.shape[-1])
    if not bool(rows.any(dim=1).all()):
        raise ValueError("SR-attn: mask_s selects no reference key; every row of the masked softmax would be empty")
    # -inf is exact in bf16/fp16 too, and every row keeps a finite key (checked above): no 0/0 in the softmax.
    bias = torch.zeros(rows.shape, dtype=dtype, device=mask_s.device).masked_fill(~rows.bool(), float("-inf"))
    return bias.reshape(len(rows), 1, 1, -1)


def sr_attention(q: Tensor, k: Tensor, v: Tensor, k_ref: Tensor, v_ref: Tensor, heads: int,
                 mask_s: Tensor | None, mask_t: Tensor | None, fused: bool = True) -> Tensor:
    """SPEC §4.4: q, k, v [B, N, C]; k_ref, v_ref [B, Nr, C]; mask_s [Nr] or [B, Nr] (bool), mask_t [N] or [B, N]
    (bool or in [0, 1]); a mask of None is 1 everywhere. The editor calls it with B = 1 (the target element)."""
    out_self = attention(q, k, v, heads, fused=fused)                          # plain self-attention
    bias = None if mask_s is None else log_mask_bias(mask_s, q.dtype)
    out_ref = attention(q, k_ref.to(q.dtype), v_ref.to(q.dtype), heads, bias=bias, fused=fused)  # reference-object keys
    if mask_t is None:
        return out_ref
    m = mask_t.to(q.dtype).reshape(-1, mask_t.shape[-1], 1)
    return m * out_ref + (1 - m) * out_self                                    # per query pixel


def sr_attention_groups(q: Tensor, k: Tensor, v: Tensor, refs: list[tuple[Tensor, Tensor, Tensor | None]],
                        masks_t: list[Tensor | None], heads: int, fused: bool = True) -> Tensor:
    """SR-attn with one reference group per target-word region (extends SPEC §4.4):
    out = Σ_j m_j · out_ref_j + (1 − Σ_j m_j) · out_self, with out_ref_j = softmax(Q [K_1; K_2; ...]ᵀ·scale
    + log[mask_1; mask_2; ...]) [V_1; V_2; ...] over group j's references (keys concatenated along the tokens).

    refs: (k_ref [B, Nr, C], v_ref, mask_s [Nr] or None) per group; masks_t: per group, [N] or [B, N] (disjoint,
    so Σ_j m_j <= 1) or None (1 everywhere; only with one group). One group is `sr_attention`, bit for bit.
    """
    if len(refs) != len(masks_t):
        raise ValueError(f"{len(refs)} reference groups but {len(masks_t)} mask_t")
    out_self = attention(q, k, v, heads, fused=fused)                          # plain self-attention
    outs = [attention(q, kr.to(q.dtype), vr.to(q.dtype), heads, fused=fused,
                      bias=None if ms is None else log_mask_bias(ms, q.dtype)) for kr, vr, ms in refs]
    if all(m is None for m in masks_t):
        if len(outs) > 1:
            raise ValueError("several reference groups need each one's mask_t to share the target")
        return outs[0]
    if any(m is None for m in masks_t):
        raise ValueError("give every group's mask_t or none")
    ms = [m.to(q.dtype).reshape(-1, m.shape[-1], 1) for m in masks_t]
    acc, total = ms[0] * outs[0], ms[0]
    for m, o in zip(ms[1:], outs[1:]):
        acc, total = acc + m * o, total + m
    return acc + (1 - total) * out_self                                        # per query pixel
