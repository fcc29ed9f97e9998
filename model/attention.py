"""Attention: the one function that does the math, the UNet's attention layer, and its hook.

`attention()` is softmax(Q K^T * scale + bias) V, written out; when nobody needs the probabilities it
takes PyTorch's fused kernel, which computes the same thing without materialising the maps.
Every UNet attention layer is addressed by an `AttnSite` (§2 block index 0-15 and "self"/"cross")
and calls the `AttentionHook` set on it, if any, with the step index its caller passed in.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Kind = Literal["self", "cross"]
# §5: do not materialise every map. Explicit path: scores per query chunk (B * heads * rows * Nk);
# 512 MiB in float32, plus as much for the softmax.
# At 1024² (a 128² latent) a whole self-attention map would be 16384² per head: 8 GiB for 8 heads in float32.
MAX_SCORE_ELEMENTS = 2**27


def split_heads(x: Tensor, heads: int) -> Tensor:
    """[B, N, C] -> [B, heads, N, C/heads]."""
    b, n, c = x.shape
    return x.view(b, n, heads, c // heads).transpose(1, 2)


def merge_heads(x: Tensor) -> Tensor:
    """[B, heads, N, d] -> [B, N, heads*d]."""
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


def attention_probs(q: Tensor, k: Tensor, bias: Tensor | None = None) -> Tensor:
    """softmax(Q K^T / sqrt(d) + bias) for head-split Q [B,H,Nq,d], K [B,H,Nk,d] -> [B,H,Nq,Nk]."""
    scores = torch.einsum("bhqd,bhkd->bhqk", q * q.shape[-1] ** -0.5, k)  # scale Q, not the big score map
    if bias is not None:
        scores = scores + bias
    # No float32 upcast for bf16/fp16: torch's softmax kernels already accumulate in float32 (on CPU, bf16 is
    # bit-equal to float32 math rounded once); the rounding that remains is in the bf16 scores themselves.
    return scores.softmax(dim=-1)


def attention(q: Tensor, k: Tensor, v: Tensor, heads: int, bias: Tensor | None = None,
              fused: bool = True, max_scores: int = MAX_SCORE_ELEMENTS) -> Tensor:
    """Multi-head attention on unsplit [B, N, C] projections -> [B, Nq, C].

    `bias` is added to the scores (broadcast to [B, heads, Nq, Nk]), e.g. a causal mask or log(mask).
    fused=False computes the probabilities explicitly (same numbers up to rounding), at most `max_scores`
    scores at a time.
    """
    q, k, v = split_heads(q, heads), split_heads(k, heads), split_heads(v, heads)
    if fused:
        # No Nq x Nk map on CPU (torch 2.13), with or without a float [1, 1, 1, Nk] bias: at Nq = Nk = 16384,
        # 8 heads, d 40 the peak grows by 24 MiB (the map would be 8 GiB in float32).
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    else:
        out = explicit_attention(q, k, v, bias, max_scores)
    return merge_heads(out)


def explicit_attention(q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None = None,
                       max_scores: int = MAX_SCORE_ELEMENTS) -> Tensor:
    """softmax(Q K^T / sqrt(d) + bias) V on head-split tensors, in query chunks of at most `max_scores` scores.

    Chunking the queries is exact: the softmax normalises each query's row on its own.
    """
    b, h, nq, _ = q.shape
    rows = max(1, max_scores // (b * h * k.shape[2]))
    if rows >= nq:
        return attention_probs(q, k, bias) @ v
    per_query = bias is not None and bias.ndim >= 2 and bias.shape[-2] > 1  # else the bias broadcasts over queries
    return torch.cat([attention_probs(q[:, :, i:i + rows], k, bias[..., i:i + rows, :] if per_query else bias) @ v
                      for i in range(0, nq, rows)], dim=2)


@dataclass(frozen=True)
class AttnSite:
    """Where an attention call happens: §2 block index, self/cross, query grid, heads."""

    block: int
    kind: Kind
    height: int
    width: int
    heads: int


class AttentionHook:
    """Base class for attention hooks: every method defaults to "change nothing".

    Shapes: q [B, Nq, C], k and v [B, Nk, C] are the projections before the head split;
    probs [B, heads, Nq, Nk]; an output is [B, Nq, C] (before the output projection).
    `step` is whatever the UNet's caller passed as `step` (None if nothing).
    """

    def on_qkv(self, site: AttnSite, step: int | None, q: Tensor, k: Tensor, v: Tensor) -> None:
        """Read the projections."""

    def replace_output(self, site: AttnSite, step: int | None, q: Tensor, k: Tensor, v: Tensor) -> Tensor | None:
        """Return a whole attention output to use instead of the layer's own, or None."""
        return None

    def needs_probs(self, site: AttnSite, step: int | None) -> bool:
        """True to have the layer compute probabilities explicitly and pass them to edit_probs."""
        return False

    def edit_probs(self, site: AttnSite, step: int | None, probs: Tensor) -> Tensor:
        """Read or replace the attention probabilities."""
        return probs


class Attention(nn.Module):
    """A UNet attention layer (diffusers names: to_q, to_k, to_v, to_out.0)."""

    def __init__(self, dim: int, heads: int, context_dim: int | None = None, block: int = -1, kind: Kind = "self",
                 upcast: bool = False):
        super().__init__()
        ctx = context_dim or dim
        self.heads, self.block, self.kind = heads, block, kind
        # §9.3: SD 2.1-768 (upcast_attention) computes attention in float32 even in half precision, where its
        # scores overflow float16; a no-op for a float32/float64 model.
        self.upcast = upcast
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(ctx, dim, bias=False)
        self.to_v = nn.Linear(ctx, dim, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim)])
        self.hook: AttentionHook | None = None
        self.fused = True  # False: always use the explicit path (for tests and benchmarks)

    def forward(self, x: Tensor, hw: tuple[int, int], context: Tensor | None = None, step: int | None = None) -> Tensor:
        """x [B, H*W, C]; context [B, 77, D] for cross-attention."""
        src = x if context is None else context
        q, k, v = self.to_q(x), self.to_k(src), self.to_v(src)
        dtype = q.dtype
        if self.upcast and dtype in (torch.float16, torch.bfloat16):
            # Hooks then see float32 q/k/v too, so that their own attention (SR-attn) is upcast as well.
            q, k, v = q.float(), k.float(), v.float()
        return self.to_out[0](self._attend(q, k, v, hw, step).to(dtype))

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, hw: tuple[int, int], step: int | None) -> Tensor:
        """The attention output [B, Nq, C] before the output projection, through the hook if one is set."""
        hook = self.hook
        if hook is None:
            return attention(q, k, v, self.heads, fused=self.fused)
        site = AttnSite(self.block, self.kind, hw[0], hw[1], self.heads)
        hook.on_qkv(site, step, q, k, v)
        out = hook.replace_output(site, step, q, k, v)
        if out is None and hook.needs_probs(site, step):
            # Whole, not chunked: P2P reads probabilities only for cross-attention (77 keys) and for self-attention
            # at <= (latent/2)² pixels (EditController.max_self_pixels), both bounded by the image size.
            probs = hook.edit_probs(site, step, attention_probs(split_heads(q, self.heads), split_heads(k, self.heads)))
            out = merge_heads(probs.to(v.dtype) @ split_heads(v, self.heads))
        elif out is None:
            out = attention(q, k, v, self.heads, fused=self.fused)
        return out
