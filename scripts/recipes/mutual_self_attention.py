#!/usr/bin/env python
"""Recipe 2: mutual self-attention in the manner of MasaCtrl: in chosen self-attention layers and steps the target's
queries attend to the *source's* keys and values, so the edit takes the source's content at the target's layout
(docs/modify.md). The library is not changed: a hook beside SpecRef's.

    python scripts/recipes/mutual_self_attention.py [--steps 20] [--layers 10-16] [--from-step 4]
        [--out out/recipes/mutual_self_attention.png]

The edit batch is [u_src, u_tgt, c_src, c_tgt]: each target row (unconditional and conditional) reads its own
half's source row. Run here on the Prompt-to-Prompt baseline (no reference): MasaCtrl's own setting, where the
source's look is what the target should keep.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch import Tensor

from _common import run_example, side_by_side
from model.attention import AttentionHook, AttnSite, attention


class MutualSelfAttention(AttentionHook):
    """In self-attention blocks `layers` at editing steps `steps`: target queries over the source's K/V."""

    def __init__(self, layers: range, steps: range):
        self.layers, self.steps = layers, steps

    def replace_output(self, site: AttnSite, step: int | None, q: Tensor, k: Tensor, v: Tensor) -> Tensor | None:
        if site.kind != "self" or site.block not in self.layers or step not in self.steps:
            return None
        out = attention(q, k, v, site.heads)  # sources: their own self-attention
        src = torch.tensor([0, 0, 2, 2])       # each row's source: u_src for u_*, c_src for c_*
        mutual = attention(q, k[src], v[src], site.heads)
        return torch.stack([out[0], mutual[1], out[2], mutual[3]])


def main(argv: list[str] | None = None) -> int:
    """Run the baseline with and without mutual self-attention; write both side by side."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--layers", default="10-16", help="self-attention block indices 'start-end' [10-16]")
    p.add_argument("--from-step", type=int, default=4, help="first editing step with mutual attention [4]")
    p.add_argument("--out", default="out/recipes/mutual_self_attention.png")
    a = p.parse_args(argv)
    l0, l1 = (int(x) for x in a.layers.split("-"))
    plain = run_example(a.steps, use_reference=False)
    mutual = run_example(a.steps, hook=MutualSelfAttention(range(l0, l1), range(a.from_step, a.steps)),
                         use_reference=False)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    side_by_side([plain.edit, mutual.edit], ["P2P baseline", f"+ mutual self-attention {a.layers}"]).save(a.out)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
