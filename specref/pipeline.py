"""The SpecRef edit (docs/spec.md §3-§4): the denoising loop first, then the steps `edit` runs — prepare (inputs.py:
check and read every input), `invert` (stage 1, §3) and `edit_stage` (stage 2, §4)."""
from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from tqdm.auto import tqdm

import sampling
from model import AttentionHook, StableDiffusion
from weights.precision import DTYPES

from .blend import LocalBlend
from .controller import EditController
from .features import ReferenceFeatures, StageOneHook
from .images import to_pil
from .inputs import Prepared, prepare
from .masks import MaskT, MaskTStep
from .p2p import MapStore, P2PEdit
from .references import Reference, auto_mask_s, stage1_extra
from .settings import EditConfig
from .srattn import SRAttention
from .trace import EditObserver, Recorder

# an attention hook of the user's beside the method's, or a function of the controller that makes one
UserHook = AttentionHook | Callable[[EditController], AttentionHook]


@dataclass(frozen=True)
class Step:
    """One editing step as the loop saw it: x_in, x_out [2, 4, h, w] = [reconstruction, edit] before the UNet call
    and after the DDIM update and Local Blend; eps [4, 4, h, w] for [u_src, u_tgt, c_src, c_tgt] (before guidance);
    where Local Blend acted ([h, w] 0/1) and mask_t as computed at this step (None where they did not act)."""

    index: int
    t: int
    x_in: Tensor
    eps: Tensor
    x_out: Tensor
    blend_mask: Tensor | None = None
    mask_t: MaskTStep | None = None


def denoise(sd: StableDiffusion, z_src: Tensor, context: Tensor, ddim: sampling.DDIM, controller: EditController,
            blend: LocalBlend, mask_t: MaskT | None, guidance: float) -> Iterator[Step]:
    """Stage 2's loop (§4): the reconstruction path follows the inverted trajectory, the edit path is denoised with
    the controller in the UNet's attention; iterate it to see each step (the last x_out is the result)."""
    n = ddim.num_steps
    x = torch.stack([z_src[n], z_src[n]])                                 # [reconstruction, edit], both z_src[N]
    with sd.unet.hooked(controller):
        for i, t in enumerate(ddim.timesteps.tolist()):
            x = torch.stack([z_src[n - i], x[1]])                        # reconstruction = inverted latent (§4)
            eps = sampling.batch_eps(sd, x, t, context, step=i)          # UNet on [u_src, u_tgt, c_src, c_tgt]
            x_next = ddim.step(sampling.guide(eps, guidance, 2), t, x)   # CFG (§2.5), then the DDIM update (§2.4)
            x_next, blend_mask = blend(i, x_next)                        # Local Blend (§4.3)
            yield Step(i, t, x, eps, x_next, blend_mask, mask_t.seen(i) if mask_t else None)
            x = x_next


@dataclass
class EditResult:
    """What an edit produces (images at the source's original size)."""

    edit: Image.Image
    reconstruction: Image.Image
    masks_s: list[np.ndarray]       # every reference's mask_s [H, W] bool at the working size (auto ones as found)
    mask_t: Tensor | None           # [h, w] bool at the latent size: the last mask_t used (None without one); with
                                    # one reference per target word, the union of the word groups' regions
    latents: dict[str, Tensor]      # source_inverted [N+1,4,h,w], reconstruction_latent, edit_latent [1,4,h,w]
    config: EditConfig              # the settings as resolved (model defaults filled in)
    working_size: tuple[int, int]
    timings: dict[str, float] = field(default_factory=dict)
    feature_bytes: int = 0          # memory of the kept reference K/V
    masks_t: dict[str, Tensor] = field(default_factory=dict)  # each word group's last mask_t ("w1,w2" -> [h, w])
    blend_mask: Tensor | None = None  # [h, w] 0/1 at the latent size: the final Local Blend region (None: no blend)
    inspection: Any = None          # with edit(..., inspect=True): a specref.trace.Recorder of stage 2
    sources: dict[str, str] = field(default_factory=dict)  # settings filled from the model or the defaults (§8.4)

    @property
    def mask_s(self) -> np.ndarray | None:
        """The first reference's mask_s (None without a reference)."""
        return self.masks_s[0] if self.masks_s else None


@dataclass
class Inversion:
    """Stage 1's result (§3): the source's inverted trajectory and the kept reference K/V.

    Several edits can share one: `stage1_key` names everything stage 1 depends on.
    """

    key: tuple
    z_src: Tensor                       # [N+1, 4, h, w]
    features: ReferenceFeatures | None  # K/V of the reference for the SR layers x steps asked for
    ddim: sampling.DDIM
    seconds: float
    reference_maps: Tensor | None = None  # [K, h, w, 77] map-block maps of the references, for auto mask_s


def stage1_key(cfg: EditConfig, references: list[Reference] | None = None) -> tuple:
    """What stage 1 depends on besides the input images and the model (§3); with `references`, also their count,
    prompt overrides and auto masks (nothing more for one plain reference)."""
    key = (cfg.use_reference, cfg.source_prompt, cfg.reference_prompt if cfg.use_reference else None, cfg.steps,
           cfg.size, cfg.inversion_guidance, cfg.feature_dtype if cfg.use_reference else None)
    extra = stage1_extra(cfg.map_blocks, references) if cfg.use_reference else ()
    return key + (extra,) if extra else key


@torch.no_grad()
def invert(sd: StableDiffusion, prep: Prepared, cfg: EditConfig, feature_blocks: Iterable[int] = (),
           feature_steps: Iterable[int] = (), progress: bool = True) -> Inversion:
    """Stage 1 (§3): encode and invert [src, ref] together, conditional only; keep the reference K/V of
    `feature_blocks` x `feature_steps` (editing step indices; a sweep asks for the union of its runs')."""
    t0 = time.perf_counter()
    z0 = sampling.encode(sd, prep.images)
    ddim = sampling.ddim_for(sd, cfg.steps)  # the model's schedule and prediction type (§2.4, §9.4)
    refs = prep.references if cfg.use_reference else []
    prompts = [cfg.source_prompt] + [cfg.reference_prompt if r.prompt is None else r.prompt for r in refs]
    features, keep, maps = None, contextlib.nullcontext(), None
    if cfg.use_reference:
        k = len(refs)  # the batch is [src, ref_1..ref_K] (doubled, uncond first, at inversion guidance != 1)
        feat_dtype = DTYPES[cfg.feature_dtype] if cfg.feature_dtype else None
        features = ReferenceFeatures(cfg.steps, set(feature_blocks), set(feature_steps), index=list(range(1, k + 1)),
                                     dtype=feat_dtype)
        keep = sd.unet.hooked(features, blocks=sorted(features.blocks), kinds=("self",))
        if any(r.auto for r in refs):  # auto mask_s (§8.3): the conditional reference elements' word maps
            cond = 0 if cfg.inversion_guidance == 1 else k + 1
            maps = StageOneHook(features, tuple(cfg.map_blocks), [cond + i for i in range(1, k + 1)])
            keep = sd.unet.hooked(maps, blocks=sorted(set(features.blocks) | set(cfg.map_blocks)))
    with keep:
        zs = sampling.invert(sd, z0, prompts, guidance=cfg.inversion_guidance, progress=progress, ddim=ddim)
    return Inversion(stage1_key(cfg, prep.references), zs[:, 0], features, ddim, time.perf_counter() - t0,
                     None if maps is None else maps.map_sum)


def reference_masks_s(prep: Prepared, inv: Inversion, cfg: EditConfig) -> list[np.ndarray]:
    """Every reference's mask_s at the working size: the given ones, and auto ones from the inversion's maps."""
    hw, out = (prep.size[1], prep.size[0]), []
    for i, (m, tokens) in enumerate(zip(prep.masks_s, prep.auto_mask_tokens)):
        if m is None:
            name = "the reference" if len(prep.masks_s) == 1 else f"reference {i + 1}"
            m = auto_mask_s(inv.reference_maps[i], tokens, hw, cfg.interp, cfg.auto_mask_thres, name)
        out.append(m)
    return out


@torch.no_grad()
def edit_stage(sd: StableDiffusion, prep: Prepared, inv: Inversion, cfg: EditConfig, progress: bool = True,
               observer: EditObserver | None = None, hook: UserHook | None = None) -> EditResult:
    """Stage 2 (§4): P2P with the reconstruction path; SR-attn in the chosen layers and steps. `hook`: an attention
    hook of the user's beside the method's, or a function of the EditController that makes one (docs/modify.md)."""
    key = stage1_key(cfg, prep.references)
    if inv.key != key:
        raise ValueError(f"this inversion was made for other stage-1 settings ({inv.key}) than {key}")
    latent_hw = tuple(inv.z_src.shape[-2:])
    plan = prep.plan.to(sd.device, sd.precise_dtype)
    maps, sr, mask_t, masks_s = MapStore(plan.map_blocks), None, None, []
    if cfg.use_reference:
        missing = [(b, i) for b in range(*cfg.sr_layers) for i in range(*cfg.sr_steps) if (b, i) not in inv.features.kv]
        if missing:
            raise ValueError(f"the inversion kept no reference K/V for (block, step) {missing[:4]}...")
        masks_s = reference_masks_s(prep, inv, cfg)
        if prep.target_tokens is not None:
            mask_t = MaskT(maps, [g.tokens for g in prep.groups], latent_hw, cfg.interp, cfg.thres)
        stack = torch.from_numpy(np.stack(masks_s)).to(sd.device, sd.precise_dtype)
        probe = observer.on_sr if observer is not None and observer.wants_sr() else None
        sr = SRAttention(inv.features, range(*cfg.sr_layers), range(*cfg.sr_steps),
                         stack if cfg.masks in ("both", "s") else None, prep.groups, mask_t, cfg.interp, cfg.thres,
                         probe)
    controller, blend = EditController(P2PEdit(plan, latent_hw), maps, sr), LocalBlend(plan, maps)
    if hook is not None:
        controller.extra = hook if isinstance(hook, AttentionHook) else hook(controller)
    context = sd.encode_prompts(["", "", cfg.source_prompt, cfg.target_prompt])  # [u, u, c_src, c_tgt]
    t0 = time.perf_counter()
    last = blend_mask = None
    loop = denoise(sd, inv.z_src, context, inv.ddim, controller, blend, mask_t, cfg.guidance)
    with contextlib.closing(loop) as steps:
        for last in tqdm(steps, total=cfg.steps, desc="edit", disable=not progress):
            blend_mask = last.blend_mask if last.blend_mask is not None else blend_mask
            if observer is not None:
                observer.on_step(last)
    if observer is not None:
        observer.on_finish(maps.sum)
    seconds, t1 = time.perf_counter() - t0, time.perf_counter()
    out = sampling.decode(sd, last.x_out)
    timings = {"invert": inv.seconds, "edit": seconds, "decode": time.perf_counter() - t1}
    x, size = last.x_out, prep.source.size
    masks_t = mask_t.current.masks if mask_t is not None and mask_t.current is not None else []
    return EditResult(
        edit=to_pil(out[1], size), reconstruction=to_pil(out[0], size), masks_s=masks_s,
        mask_t=mask_t.current.union if masks_t else None,
        latents={"source_inverted": inv.z_src, "reconstruction_latent": x[:1].clone(), "edit_latent": x[1:].clone()},
        config=cfg, working_size=prep.size, timings=timings, feature_bytes=sr.features.nbytes() if sr else 0,
        masks_t={",".join(g.words): m for g, m in zip(prep.groups, masks_t)}, blend_mask=blend_mask,
        sources=prep.sources)


@torch.no_grad()
def edit(sd: StableDiffusion, source: str | Path | Image.Image, reference: Any, config: EditConfig,
         reference_mask_file: str | Path | Image.Image | None = None, progress: bool = True,
         observer: EditObserver | None = None, inspect: bool = False, hook: UserHook | None = None) -> EditResult:
    """Edit `source` so that the target words' region becomes the reference object (§3-§4); `reference` may be one
    image (with `reference_mask_file`, or "auto") or a list of `Reference`s (views, one per target word; §8).

    inspect=True records what stage 2 computes (result.inspection, a specref.trace.Recorder: per-step latents,
    masks, the word maps, SR-attn's change and reference mass); the edit itself is the same. `hook`: see edit_stage.
    """
    if inspect and observer is not None:
        raise ValueError("give inspect=True or an observer, not both")
    t0 = time.perf_counter()
    cfg, prep = prepare(sd, source, reference, config, reference_mask_file)
    inv = invert(sd, prep, cfg, range(*cfg.sr_layers), range(*cfg.sr_steps), progress)
    if inspect:
        observer = Recorder(inv.ddim, cfg.guidance, sr=True, x0_steps=x0_steps(cfg.steps))
    result = edit_stage(sd, prep, inv, cfg, progress, observer, hook)
    result.inspection = observer if inspect else None
    result.timings["total"] = time.perf_counter() - t0
    return result


def x0_steps(n: int, count: int = 5) -> tuple[int, ...]:
    """The steps whose predicted x0 an inspection keeps: `count` spread from the first to the last."""
    return tuple(sorted({round(k * (n - 1) / max(1, count - 1)) for k in range(count)}))
