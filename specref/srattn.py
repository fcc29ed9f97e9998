"""SR-attn: the target's self-attention also attends to the reference object's K/V (SPEC §4.4)."""
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


def sr_parts(q: Tensor, k: Tensor, v: Tensor, k_ref: Tensor, v_ref: Tensor, heads: int,
             mask_s: Tensor | None, fused: bool = True) -> tuple[Tensor, Tensor]:
    """SR-attn's two attentions (SPEC §4.4): out_self (plain) and out_ref (masked softmax over the reference)."""
    out_self = attention(q, k, v, heads, fused=fused)                          # plain self-attention
    bias = None if mask_s is None else log_mask_bias(mask_s, q.dtype)
    out_ref = attention(q, k_ref.to(q.dtype), v_ref.to(q.dtype), heads, bias=bias, fused=fused)  # reference-object keys
    return out_self, out_ref


def blend_by_mask_t(out_self: Tensor, out_ref: Tensor, mask_t: Tensor | None) -> Tensor:
    """out = mask_t * out_ref + (1 - mask_t) * out_self, per query pixel (SPEC §4.4); no mask_t: out_ref."""
    if mask_t is None:
        return out_ref
    m = mask_t.to(out_ref.dtype).reshape(-1, mask_t.shape[-1], 1)
    return m * out_ref + (1 - m) * out_self


def sr_attention(q: Tensor, k: Tensor, v: Tensor, k_ref: Tensor, v_ref: Tensor, heads: int,
                 mask_s: Tensor | None, mask_t: Tensor | None, fused: bool = True) -> Tensor:
    """SPEC §4.4: q, k, v [B, N, C]; k_ref, v_ref [B, Nr, C]; mask_s [Nr] or [B, Nr] (bool), mask_t [N] or [B, N]
    (bool or in [0, 1]); a mask of None is 1 everywhere. The editor calls it with B = 1 (the target element)."""
    return blend_by_mask_t(*sr_parts(q, k, v, k_ref, v_ref, heads, mask_s, fused), mask_t)


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
