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
