"""Seeing what an edit computes on the way: the observer interface of stage 2, the Recorder that keeps what it
sees, and the trace file (README "Seeing inside an edit").

An EditObserver only reads, so an edit is bit-identical with or without one. The Recorder keeps what is
latent-sized per step (latents, noise predictions, masks) and sums what is attention-sized over the steps
(SR-attn's change and reference mass per layer size), so memory stays bounded.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

import sampling
from model.attention import AttnSite

if TYPE_CHECKING:
    from .pipeline import Step

class EditObserver:
    """Sees what stage 2 computes (`--inspect`, `--trace`); it only reads: the edit is the same with or without."""

    def on_step(self, step: "Step") -> None:
        """After each step's DDIM update and Local Blend."""

    def wants_sr(self) -> bool:
        """True to get on_sr calls (they cost an explicit pass over the reference keys)."""
        return False

    def on_sr(self, site: AttnSite, step: int, change: Tensor, ref_mass: Tensor) -> None:
        """An SR-attn layer of the target: change [Nq] = mean |out - out_self| over channels per query pixel;
        ref_mass [K, Nr] = the masked softmax's mass per reference key, summed over mask_t's queries."""

    def on_finish(self, maps: Tensor | None) -> None:
        """After the last step: the map blocks' maps [2, hm, wm, 77] (cond source, target), summed over steps."""



# Trace keys and shapes (N steps, latent h x w, map blocks' hm x wm); README "Traces" documents them.
TRACE_KEYS = ("edit_latents", "eps", "blend_mask", "mask_t", "maps_source", "maps_target", "source_inverted")


class Recorder(EditObserver):
    """Records stage 2 step by step; `sr=True` also sums SR-attn's change and reference mass (an extra
    explicit pass over the reference keys in SR layers); `x0_steps`: steps whose predicted x0 is kept."""

    def __init__(self, ddim: sampling.DDIM, guidance: float, sr: bool = False, x0_steps: tuple[int, ...] = ()):
        self.ddim, self.guidance, self.sr, self.x0_steps = ddim, guidance, sr, set(x0_steps)
        n = ddim.num_steps
        self.latents: list[Tensor] = []              # x before step 0, then after each step: [2, 4, h, w]
        self.eps: list[Tensor] = []                  # [4, 4, h, w] per step
        self.blend: list[Tensor | None] = [None] * n  # Local Blend mask [h, w] where it acted
        self.mask_t: list[Tensor | None] = [None] * n  # mask_t [h, w] at the latent size at SR steps
        self.mask_t_map: list[Tensor | None] = [None] * n  # its normalised map [hm, wm] before the threshold
        self.x0: dict[int, Tensor] = {}              # step -> predicted x0 [2, 4, h, w] ([reconstruction, edit])
        self.change: dict[tuple[int, int], list] = {}  # layer (h, w) -> [sum of change [Nq], sum of mass [Nr], calls]
        self.maps: Tensor | None = None              # [2, hm, wm, 77]
        self.sr_blocks: dict[tuple[int, int], set[int]] = {}  # layer (h, w) -> the SR blocks of that size

    def on_step(self, step: "Step") -> None:
        i = step.index
        if not self.latents:
            self.latents.append(step.x_in.detach().clone())
        self.latents.append(step.x_out.detach().clone())
        self.eps.append(step.eps.detach().clone())
        if i in self.x0_steps:  # with the guided eps, as the DDIM step uses it (§2.4)
            e = sampling.guide(step.eps, self.guidance, step.x_in.shape[0])
            self.x0[i] = self.ddim.predict_x0(step.x_in, e, self.ddim.alpha_bar(step.t))
        if step.blend_mask is not None:
            self.blend[i] = step.blend_mask.detach().clone()
        if step.mask_t is not None:  # the groups' maps as one picture: each pixel's largest normalised value
            self.mask_t[i] = step.mask_t.union.detach().clone()
            self.mask_t_map[i] = torch.stack(step.mask_t.maps).amax(0).detach().clone()

    def wants_sr(self) -> bool:
        return self.sr

    def on_sr(self, site: AttnSite, step: int, change: Tensor, ref_mass: Tensor) -> None:
        self.sr_blocks.setdefault((site.height, site.width), set()).add(site.block)
        acc = self.change.setdefault((site.height, site.width), [0, 0, 0])
        acc[0], acc[1], acc[2] = acc[0] + change.detach(), acc[1] + ref_mass.detach(), acc[2] + 1

    def on_finish(self, maps: Tensor | None) -> None:
        self.maps = None if maps is None else maps.detach().clone()

    # ---- read-outs ---------------------------------------------------------------------------------
    def sr_maps(self) -> dict[tuple[int, int], tuple[Tensor, Tensor]]:
        """Per SR layer size (h, w): (change [h, w], reference mass [K, h, w] per reference), averaged over the
        layers' calls."""
        return {hw: ((c / k).reshape(hw), (m / k).reshape(-1, *hw)) for hw, (c, m, k) in sorted(self.change.items())}

    def trace(self, source_inverted: Tensor) -> dict[str, Tensor]:
        """The trace tensors (TRACE_KEYS; float32, or float64 in the float64 mode)."""
        dt = torch.float64 if self.latents[0].dtype == torch.float64 else torch.float32
        h, w = self.latents[0].shape[-2:]
        out = {"edit_latents": torch.stack(self.latents), "eps": torch.stack(self.eps),
               "source_inverted": source_inverted}

        def rows(items: list[Tensor | None]) -> Tensor | None:  # NaN rows where nothing was recorded
            if all(m is None for m in items):
                return None
            nan = torch.full((h, w), math.nan, dtype=dt)
            return torch.stack([nan if m is None else m.to("cpu", dt) for m in items])

        for key, items in (("blend_mask", self.blend), ("mask_t", self.mask_t)):
            if (r := rows(items)) is not None:
                out[key] = r
        if self.maps is not None:
            out["maps_source"], out["maps_target"] = self.maps[0], self.maps[1]
        return {k: v.to("cpu", dt).contiguous() for k, v in out.items()}


def save_trace(path: str | Path, tensors: dict[str, Tensor], meta: dict) -> Path:
    """Write a trace as safetensors; `meta` (settings, timesteps) goes into its JSON metadata."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, path, metadata={"specref": json.dumps(meta, default=str)})
    return path


def load_trace(path: str | Path) -> tuple[dict[str, Tensor], dict]:
    """Read a trace: (tensors, metadata dict; empty if the file has none)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    return tensors, json.loads(meta["specref"]) if "specref" in meta else {}
