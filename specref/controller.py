"""Stage 2's attention hook (docs/spec.md §4): one call into each part of the method, in the order §4 gives.

    replace_output: in the SR layers at the SR steps, the layer's output is SR-attn's (§4.4; srattn.py)
    edit_probs:     the P2P edit of the target's maps (§4.1; p2p.py), then the map store keeps them (§4.1)

Local Blend (§4.3) acts on the latents after the DDIM step, in the loop (pipeline.py), not here. The edit batch
is [u_src, u_tgt, c_src, c_tgt]; P2P and SR-attn touch only the conditional target c_tgt.

A hook of the user's (`extra`, docs/modify.md) sits beside the method's: it sees every layer's projections first,
may return a layer's whole output (then the method's is not computed there), and reads or changes the
probabilities after the P2P edit, before the map store keeps them.
"""
from __future__ import annotations

from torch import Tensor

from model.attention import AttentionHook, AttnSite

from .p2p import MapStore, P2PEdit
from .srattn import SRAttention


class EditController(AttentionHook):
    """P2P's map edit, the map store and SR-attn, composed for the UNet's attention layers (§4)."""

    def __init__(self, p2p: P2PEdit, maps: MapStore, sr: SRAttention | None, extra: AttentionHook | None = None):
        self.p2p, self.maps, self.sr, self.extra = p2p, maps, sr, extra

    def on_qkv(self, site: AttnSite, step: int | None, q: Tensor, k: Tensor, v: Tensor) -> None:
        if self.extra is not None:
            self.extra.on_qkv(site, step, q, k, v)

    def replace_output(self, site: AttnSite, step: int | None, q: Tensor, k: Tensor, v: Tensor) -> Tensor | None:
        out = None if self.extra is None else self.extra.replace_output(site, step, q, k, v)
        if out is not None or self.sr is None or not self.sr.active(site, step):
            return out  # SR layers skip the P2P self-attention replacement (§4.4)
        return self.sr(site, step, q, k, v)

    def needs_probs(self, site: AttnSite, step: int | None) -> bool:
        wanted = self.extra is not None and self.extra.needs_probs(site, step)
        return wanted or self.maps.wants(site) or self.p2p.needs_probs(site, step)

    def edit_probs(self, site: AttnSite, step: int | None, probs: Tensor) -> Tensor:
        if self.p2p.needs_probs(site, step) or site.kind == "cross":
            probs = self.p2p(site, step, probs)  # the target's maps edited (§4.1)
        if self.extra is not None:
            probs = self.extra.edit_probs(site, step, probs)
        if self.maps.wants(site):
            self.maps.add(site, probs)           # stored after the edit (§4.1)
        return probs
