"""The explicit attention path in query chunks: same numbers as one piece, bounded score maps, finite in bf16."""
from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from model.attention import attention, explicit_attention
from specref.srattn import ReferenceKeys, log_mask_bias, sr_attention


def qkv(b=2, n=50, c=64, dtype=torch.float32, seed=3):
    g = torch.Generator().manual_seed(seed)
    return [(2 * torch.randn(b, n, c, generator=g)).to(dtype) for _ in range(3)]


def biases(n=50):
    g = torch.Generator().manual_seed(4)
    keys = (torch.rand(n, generator=g) > 0.3).float().log()[None, None, None]  # [1,1,1,Nk]: -inf key columns
    causal = torch.full((n, n), float("-inf")).triu(1)                          # [Nq, Nk]: per query row
    per_head = torch.randn(2, 8, n, n, generator=g)                              # [B, H, Nq, Nk]
    return [None, keys, causal, per_head]


@pytest.mark.parametrize("bias", biases(), ids=["none", "key-columns", "causal", "per-head"])
def test_chunked_explicit_equals_whole(bias):
    q, k, v = qkv()
    whole = attention(q, k, v, 8, bias=bias, fused=False, max_scores=2**30)
    for max_scores in (1, 2 * 8 * 50 * 7, 2 * 8 * 50 * 49):  # 1 row per chunk, 7 rows (uneven), 49 + 1 rows
        chunked = attention(q, k, v, 8, bias=bias, fused=False, max_scores=max_scores)
        torch.testing.assert_close(chunked, whole, atol=1e-5, rtol=1e-5)  # BLAS blocking differs per chunk size
    torch.testing.assert_close(attention(q, k, v, 8, bias=bias), whole, atol=1e-5, rtol=1e-5)  # fused


class LargestOutput(TorchDispatchMode):
    """Records the largest tensor any op produces."""

    def __init__(self):
        super().__init__()
        self.numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.numel = max(self.numel, t.numel())
        return out


def test_chunked_score_maps_stay_within_the_budget():
    q, k, v = (t.reshape(1, 2, 256, 8) for t in qkv(b=1, n=256, c=16))
    budget = 2 * 32 * 256  # 32 query rows of 2 heads x 256 keys; the whole map is 8x that
    with LargestOutput() as seen:
        explicit_attention(q, k, v, log_mask_bias(torch.rand(256) > 0.5, q.dtype), max_scores=budget)
    assert seen.numel <= budget


@pytest.mark.parametrize("keep", [[0], [1023], list(range(500, 520))])
def test_log_mask_bias_in_bfloat16_is_finite(keep):
    q, k, v = qkv(b=1, n=1024, c=64, dtype=torch.bfloat16)
    mask_s = torch.zeros(1024, dtype=torch.bool)
    mask_s[keep] = True
    for fused in (True, False):
        out = sr_attention(q, k, v, [ReferenceKeys(k, v, mask_s)], [None], 8, fused=fused)
        assert out.isfinite().all()
        if len(keep) == 1:  # one reference key: every query takes exactly its value
            assert torch.equal(out[0], v[0, keep].expand(1024, -1))
    chunked = attention(q, k, v, 8, bias=log_mask_bias(mask_s, q.dtype), fused=False, max_scores=8 * 1024 * 100)
    assert chunked.isfinite().all()
