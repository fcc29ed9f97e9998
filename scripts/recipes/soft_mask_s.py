#!/usr/bin/env python
"""Recipe 1: a soft mask_s. SR-attn's masked softmax takes log(mask_s) as its score bias (§4.4): 0 on the reference
object's keys, -inf elsewhere. Here the bias is the log of a *soft* mask: the object mask blurred, so keys just
outside the object count a little instead of not at all (docs/modify.md).

    python scripts/recipes/soft_mask_s.py [--steps 20] [--blur 4] [--out out/recipes/soft_mask_s.png]

A hook beside SpecRef's: in the SR layers at the SR steps it returns `sr_attention` with the soft mask_s; every
other layer and step, and everything else of the edit, is the editor's. The library is not changed.
"""
from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F
from torch import Tensor

from _common import run_example, side_by_side
from model.attention import AttentionHook, AttnSite, attention
from specref.srattn import ReferenceKeys, sr_attention


class SoftMaskS(AttentionHook):
    """SR-attn with mask_s = the object mask blurred by a box of `blur` working-size pixels, resized bilinearly to
    each layer with no threshold; a blur of 0 gives back the 0/1 mask_s of the editor (as resized by it)."""

    def __init__(self, controller, blur: int):
        self.sr, self.blur, self.cache = controller.sr, blur, {}

    def soft_mask_s(self, hw: tuple[int, int]) -> Tensor:
        """[K, H*W] in [0, 1]: each reference's soft mask_s at a layer's size."""
        if hw not in self.cache:
            if self.blur == 0:
                self.cache[hw] = self.sr.mask_s_layer(hw).float()
            else:
                m = self.sr.masks_s[:, None].float()  # [K, 1, H, W] 0/1 at the working size
                m = F.avg_pool2d(m, 2 * self.blur + 1, stride=1, padding=self.blur, count_include_pad=False)
                m = F.interpolate(m, size=hw, mode="bilinear", align_corners=False)
                self.cache[hw] = m.flatten(1)
        return self.cache[hw]

    def replace_output(self, site: AttnSite, step: int | None, q: Tensor, k: Tensor, v: Tensor) -> Tensor | None:
        sr = self.sr
        if sr is None or sr.masks_s is None or not sr.active(site, step):
            return None  # the editor's own output
        hw = (site.height, site.width)
        soft = self.soft_mask_s(hw)
        refs = [ReferenceKeys(r.k, r.v, soft[list(g.refs)].flatten())
                for g, r in zip(sr.groups, sr.group_keys(site.block, step, hw))]
        masks_t = [None] * len(sr.groups) if sr.mask_t is None else sr.mask_t.at_layer(step, hw)
        target = sr_attention(q[3:], k[3:], v[3:], refs, masks_t, site.heads)     # the one function, soft mask_s
        return torch.cat([attention(q[:3], k[:3], v[:3], site.heads), target])   # the rest: plain, as the editor


def main(argv: list[str] | None = None) -> int:
    """Run the shipped example with and without the soft mask_s; write both side by side."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--blur", type=int, default=4, help="box blur radius in working-size pixels [4]")
    p.add_argument("--out", default="out/recipes/soft_mask_s.png")
    a = p.parse_args(argv)
    plain = run_example(a.steps)
    soft = run_example(a.steps, hook=lambda controller: SoftMaskS(controller, a.blur))
    from pathlib import Path

    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    side_by_side([plain.edit, soft.edit], ["SpecRef", f"soft mask_s (blur {a.blur})"]).save(a.out)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
