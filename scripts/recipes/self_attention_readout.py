#!/usr/bin/env python
"""Recipe 3: a self-attention readout: the principal components of one layer's self-attention maps over the steps,
as colours (what Prompt-to-Prompt users ask for; docs/modify.md). A hook that only reads: the edit is the same.

    python scripts/recipes/self_attention_readout.py [--steps 20] [--block 13] [--out out/recipes/readout.png]

At each step the conditional target's plain self-attention probabilities of block `--block` (heads averaged) are
[N, N]: one row per query pixel, its attention over the key pixels. The rows of all steps share one PCA; each step
is drawn as its rows' first three components, one pixel per query, as RGB.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from _common import run_example, side_by_side
from model.attention import AttentionHook, AttnSite, attention_probs, split_heads


class SelfAttentionReadout(AttentionHook):
    """Keeps the conditional target's self-attention map of one block at each step, [N, N] heads averaged."""

    def __init__(self, block: int):
        self.block, self.maps, self.hw = block, {}, None

    def on_qkv(self, site: AttnSite, step: int | None, q: Tensor, k: Tensor, v: Tensor) -> None:
        if site.kind == "self" and site.block == self.block:
            probs = attention_probs(split_heads(q[3:], site.heads), split_heads(k[3:], site.heads))
            self.maps[step], self.hw = probs[0].mean(0).float().cpu(), (site.height, site.width)

    def components(self, k: int = 3) -> tuple[Tensor, dict[int, Tensor]]:
        """The first k principal directions [k, N] of all steps' rows, and each step's rows projected [N, k]."""
        rows = torch.cat(list(self.maps.values())).double()
        mean = rows.mean(0)
        _, _, vh = torch.linalg.svd(rows - mean, full_matrices=False)
        return vh[:k], {s: (m.double() - mean) @ vh[:k].T for s, m in self.maps.items()}

    def picture(self, size: int = 128) -> Image.Image:
        """One tile per step: the projections as RGB (each component scaled over all steps to [0, 255])."""
        _, proj = self.components()
        allp = torch.cat(list(proj.values()))
        lo, hi = allp.amin(0), allp.amax(0)
        tiles = []
        for p in proj.values():
            rgb = ((p - lo) / (hi - lo).clamp(min=1e-12) * 255).reshape(*self.hw, 3).numpy().astype(np.uint8)
            tiles.append(Image.fromarray(rgb).resize((size, size), Image.Resampling.NEAREST))
        return side_by_side(tiles, [f"step {s}" for s in proj], size)


def main(argv: list[str] | None = None) -> int:
    """Run the shipped example with the readout; write its picture."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--block", type=int, default=13, help="self-attention block index [13: 16x16 on the demo model]")
    p.add_argument("--out", default="out/recipes/readout.png")
    a = p.parse_args(argv)
    readout = SelfAttentionReadout(a.block)
    run_example(a.steps, hook=readout)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    readout.picture().save(a.out)
    print(f"wrote {a.out} ({len(readout.maps)} steps of block {a.block})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
