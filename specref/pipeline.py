"""The SpecRef editing pipeline: stage 1 inversion (SPEC §3), stage 2 editing (SPEC §4)."""
from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from tqdm.auto import tqdm

import sampling
from model import StableDiffusion
from weights.precision import DTYPES

from .blend import blend_start
from .config import EditConfig
from .controller import EditController, EditObserver, P2PPlan, ReferenceFeatures, SRPlan
from .images import load_image, to_pil, to_tensor, warn_if_small, working_size
from .masks import read_mask
from .p2p import cross_replace_alpha, refine_mapper, replace_mapper, reweight_equalizer, self_replace_range
from .references import Group, Reference, StageOneHook, as_references, auto_mask_s, resolve_groups, stage1_extra
from .trace import Recorder
from .words import word_token_indices, word_vector


@dataclass
class EditResult:
    """What an edit produces (images at the source's original size)."""

    edit: Image.Image
    reconstruction: Image.Image
    mask_s: np.ndarray | None       # [H, W] bool at the working size (None without a reference): the first reference's
    mask_t: Tensor | None           # [h, w] bool at the latent size: the last mask_t used (None without SR-attn);
                                    # with one reference per target word, the union of the words' regions
    latents: dict[str, Tensor]      # source_inverted [N+1,4,h,w], reconstruction_latent, edit_latent [1,4,h,w]
    config: EditConfig
    working_size: tuple[int, int]
    timings: dict[str, float] = field(default_factory=dict)
    feature_bytes: int = 0          # memory of the kept reference K/V
    masks_s: list[np.ndarray] = field(default_factory=list)  # every reference's mask_s (auto ones as found)
    masks_t: dict[str, Tensor] = field(default_factory=dict)  # each word group's last mask_t ("w1,w2" -> [h, w])
    blend_mask: Tensor | None = None  # [h, w] 0/1 at the latent size: the final Local Blend region (None: no blend)
    inspection: Recorder | None = None  # with edit(..., inspect=True): what stage 2 computed, step by step


def validate(cfg: EditConfig, sd: StableDiffusion) -> None:
    """Check settings before any work, with messages that name the problem."""
    n = cfg.steps
    if not isinstance(n, int) or not 1 <= n <= 1000:
        raise ValueError(f"steps must be between 1 and 1000, got {n}")
    if cfg.guidance < 0 or cfg.inversion_guidance < 0:
        raise ValueError(f"guidance must be >= 0, got {cfg.guidance} / inversion {cfg.inversion_guidance}")
    if cfg.mode not in ("replace", "refine"):
        raise ValueError(f"mode must be 'replace' or 'refine', got {cfg.mode!r}")
    if cfg.masks not in ("both", "s", "t", "none"):
        raise ValueError(f"masks must be both, s, t or none, got {cfg.masks!r}")
    if cfg.interp not in ("nearest", "bilinear"):
        raise ValueError(f"interp must be nearest or bilinear, got {cfg.interp!r}")
    s0, s1 = cfg.sr_steps
    if cfg.use_reference and not 0 <= s0 < s1 <= n:
        raise ValueError(f"SR steps [{s0}, {s1}) are out of bounds for {n} steps (need 0 <= start < end <= {n})")
    l0, l1 = cfg.sr_layers
    if cfg.use_reference and not 0 <= l0 < l1 <= 16:
        raise ValueError(f"SR layers [{l0}, {l1}) are out of bounds (block indices 0-15, need 0 <= start < end <= 16)")
    levels = sd.unet.block_levels()
    if not cfg.map_blocks or any(b not in levels for b in cfg.map_blocks):
        raise ValueError(f"map_blocks must be cross-attention block indices ({min(levels)}-{max(levels)}), "
                         f"got {tuple(cfg.map_blocks)}")
    if len({levels[b] for b in cfg.map_blocks}) > 1:
        raise ValueError(f"map_blocks {tuple(cfg.map_blocks)} have maps of different sizes (levels "
                         f"{[levels[b] for b in cfg.map_blocks]}); their maps are summed, so pick blocks of one level")
    uses_mask_t = cfg.use_reference and cfg.masks in ("both", "t")
    if uses_mask_t and s0 == 0 and min(cfg.map_blocks) >= l0:
        raise ValueError(f"mask_t at SR step 0 needs a map from a block before the first SR layer {l0}, but "
                         f"map_blocks start at {min(cfg.map_blocks)}: start the SR steps at 1 or later")
    if not 0 < cfg.thres <= 1:
        raise ValueError(f"mask threshold thres must be in (0, 1], got {cfg.thres}")
    if not 0 < cfg.reference_thres <= 1:
        raise ValueError(f"auto mask threshold reference_thres must be in (0, 1], got {cfg.reference_thres}")
    if uses_mask_t and not cfg.target_words:
        raise ValueError("mask_t needs target words (--target-words), or use --masks s|none")
    if cfg.feature_dtype is not None and cfg.feature_dtype not in DTYPES:
        raise ValueError(f"feature_dtype must be one of {list(DTYPES)}, got {cfg.feature_dtype!r}")
    for p in (cfg.source_prompt, cfg.target_prompt, cfg.reference_prompt):
        if sd.tokenizer.encode(p).truncated:
            warnings.warn(f"prompt is longer than {sd.tokenizer.max_length} tokens and is truncated as CLIP does: {p!r}")


def p2p_plan(cfg: EditConfig, sd: StableDiffusion) -> P2PPlan:
    """Resolve the P2P settings to tensors (SPEC §4.1, §4.3); bad words raise here, before any work."""
    tok, src, tgt = sd.tokenizer, cfg.source_prompt, cfg.target_prompt
    plan = P2PPlan(alpha=cross_replace_alpha(tok, tgt, cfg.steps, cfg.cross_replace_steps),
                   self_range=self_replace_range(cfg.self_replace_steps, cfg.steps),
                   blend_th=tuple(cfg.blend_th), blend_start=blend_start(cfg.steps, cfg.start_blend),
                   map_blocks=tuple(cfg.map_blocks))
    if cfg.mode == "replace":
        plan.replace = replace_mapper(tok, src, tgt)
    else:
        plan.refine = refine_mapper(tok, src, tgt)
    if cfg.reweight:
        plan.equalizer = reweight_equalizer(tok, tgt, [w for w, _ in cfg.reweight], [f for _, f in cfg.reweight])
    for name in ("blend_words", "substruct_words"):
        words = getattr(cfg, name)
        if words is not None:
            setattr(plan, name, torch.stack([word_vector(tok, src, words[0]), word_vector(tok, tgt, words[1])]))
    for w in cfg.target_words:
        word_token_indices(tok, tgt, w)
    return plan


def reference_mask(reference: Image.Image, mask: str | Path | Image.Image | None) -> np.ndarray:
    """mask_s on the reference: a mask file (white = object) or RGBA alpha; without one, the cutout's non-black pixels."""
    if mask is None:
        return read_mask(reference, kind="cutout")
    m = read_mask(load_image(mask, "reference mask") if not isinstance(mask, Image.Image) else mask)
    h, w = m.shape
    if (h, w) != (reference.height, reference.width):
        # A mask saved at another resolution of the same picture (e.g. mirror-tiger's 512² mask of a 1280x1284
        # reference) is resized, as the reference implementation resizes both; another shape is an error.
        if abs(w / h - reference.width / reference.height) > 0.02 * reference.width / reference.height:
            raise ValueError(f"reference mask is {w}x{h} but the reference image is {reference.width}x"
                             f"{reference.height}; they must be the same size (or at least the same aspect)")
        m = np.asarray(Image.fromarray(m).resize(reference.size, Image.Resampling.NEAREST))
    return m


@dataclass
class Prepared:
    """An edit's checked inputs: images at the working size, mask_s, and the settings resolved to tensors."""

    source: Image.Image                 # the source as given (outputs are resized back to its size)
    images: Tensor                      # [1 + K, 3, H, W]: source, then the K references (K = 0 without one)
    size: tuple[int, int]               # working (W, H)
    plan: P2PPlan
    target_tokens: list[int] | None     # token positions of the target words, for mask_t (None: mask_t all ones)
    references: list[Reference] = field(default_factory=list)    # [] without a reference
    masks_s: list[np.ndarray | None] = field(default_factory=list)  # per reference at the working size; None: auto
    mask_tokens: list[list[int] | None] = field(default_factory=list)  # reference-prompt tokens of an auto mask
    groups: list[Group] = field(default_factory=list)            # target-word groups and their references

    @property
    def mask_s(self) -> np.ndarray | None:
        """The first reference's mask_s (None without a reference, or for an auto mask: found in stage 1)."""
        return self.masks_s[0] if self.masks_s else None


@dataclass
class Inversion:
    """Stage 1's result (SPEC §3): the source's inverted trajectory and the kept reference K/V.

    Several edits can share one: `stage1_key` names everything stage 1 depends on (`stage1_key(cfg, ...)`).
    """

    key: tuple
    z_src: Tensor                       # [N+1, 4, h, w]
    features: ReferenceFeatures | None  # K/V of the reference for the SR layers x steps asked for
    ddim: sampling.DDIM
    seconds: float
    reference_maps: Tensor | None = None  # [K, h, w, 77] map-block maps of the references, for auto mask_s


def stage1_key(cfg: EditConfig, references: list[Reference] | None = None) -> tuple:
    """What stage 1 depends on besides the input images and the model (SPEC §3); with `references` (a Prepared's),
    also their count, prompt overrides and auto masks (nothing more for one plain reference: stage1_key(cfg))."""
    key = (cfg.use_reference, cfg.source_prompt, cfg.reference_prompt if cfg.use_reference else None, cfg.steps,
           cfg.size, cfg.inversion_guidance, cfg.feature_dtype if cfg.use_reference else None)
    extra = stage1_extra(cfg, references) if cfg.use_reference else ()
    return key + (extra,) if extra else key


def _reference_prompt(cfg: EditConfig, ref: Reference) -> str:
    return cfg.reference_prompt if ref.prompt is None else ref.prompt


def _auto_tokens(sd: StableDiffusion, cfg: EditConfig, ref: Reference, name: str) -> list[int]:
    """Reference-prompt token positions an auto mask_s reads; a clear error for missing or absent words."""
    words, prompt = (cfg.reference_words if ref.mask_words is None else ref.mask_words), _reference_prompt(cfg, ref)
    if not words:
        raise ValueError(f"{name}: an auto mask needs reference words (--reference-words WORD, a word of "
                         f"--reference-prompt, e.g. --reference-prompt 'a tiger' --reference-words tiger)")
    tokens = set()
    for w in words:
        try:
            tokens.update(word_token_indices(sd.tokenizer, prompt, w))
        except ValueError as e:
            raise ValueError(f"{name}: the auto mask reads the reference's cross-attention to its words, so "
                             f"give a --reference-prompt that contains {w!r} ({e})") from None
    return sorted(tokens)


def prepare(sd: StableDiffusion, source: str | Path | Image.Image,
            reference: str | Path | Image.Image | Reference | list | None,
            cfg: EditConfig, reference_mask_file: str | Path | Image.Image | None = None) -> tuple[EditConfig, Prepared]:
    """Validate the settings and read the inputs; every bad input raises here, before any model call."""
    refs = as_references(reference, reference_mask_file) if cfg.use_reference else []
    cfg = cfg.replace(use_reference=cfg.use_reference and bool(refs))
    groups: list[Group] = []
    if cfg.use_reference:
        target_words, groups = resolve_groups(cfg, refs)  # with --for, the bound words are the target words
        cfg = cfg.replace(target_words=target_words) if target_words != tuple(cfg.target_words) else cfg
    validate(cfg, sd)
    if len(groups) > 1 and cfg.masks not in ("both", "t"):
        raise ValueError("one reference per target word needs each word's mask_t: use --masks both or t")
    names = ["reference"] if len(refs) == 1 else [f"reference {i + 1}" for i in range(len(refs))]
    mask_tokens = [_auto_tokens(sd, cfg, r, n) if r.auto else None for r, n in zip(refs, names)]
    for r in refs:  # (cfg.reference_prompt is checked by validate)
        if r.prompt is not None and sd.tokenizer.encode(r.prompt).truncated:
            warnings.warn(f"reference prompt is longer than {sd.tokenizer.max_length} tokens and is truncated")
    plan = p2p_plan(cfg, sd)
    src_img = load_image(source, "source")
    warn_if_small(src_img, "source")
    size = working_size(src_img.width, src_img.height, cfg.size or sd.native_size)
    images, masks, tokens = [to_tensor(src_img, size, sd.precise_dtype)], [], None
    for r, name in zip(refs, names):
        ref_img = load_image(r.image, name)
        warn_if_small(ref_img, name)
        mask_np = None
        if not r.auto:
            mask = Image.fromarray(r.mask) if isinstance(r.mask, np.ndarray) else r.mask
            mask_np = reference_mask(ref_img, mask)
            mask_np = np.asarray(Image.fromarray(mask_np).resize(size, Image.Resampling.NEAREST))
            if not mask_np.any():
                raise ValueError(f"{name} mask is empty at the working size {size[0]}x{size[1]}")
        masks.append(mask_np)
        # every reference at the source's working size (resized like the one reference of SPEC §3): one batch
        images.append(to_tensor(ref_img, size, sd.precise_dtype))
    if cfg.use_reference and cfg.masks in ("both", "t"):
        find = lambda words: sorted({i for w in words  # noqa: E731
                                     for i in word_token_indices(sd.tokenizer, cfg.target_prompt, w)})
        tokens = find(cfg.target_words)
        groups = [Group(g.words, g.refs, find(g.words)) for g in groups]
    return cfg, Prepared(src_img, torch.cat(images), size, plan, tokens, refs, masks, mask_tokens, groups)


@torch.no_grad()
def invert(sd: StableDiffusion, prep: Prepared, cfg: EditConfig, feature_blocks: Iterable[int] = (),
           feature_steps: Iterable[int] = (), progress: bool = True) -> Inversion:
    """Stage 1 (SPEC §3): encode and invert [src, ref] together, conditional only; keep the reference K/V of
    `feature_blocks` x `feature_steps` (editing step indices; a sweep asks for the union of its runs')."""
    t0 = time.perf_counter()
    z0 = sampling.encode(sd, prep.images)
    ddim = sampling.DDIM(cfg.steps, config=sd.scheduler_config)
    refs = prep.references if cfg.use_reference else []
    prompts = [cfg.source_prompt] + [_reference_prompt(cfg, r) for r in refs]
    features, keep, maps = None, contextlib.nullcontext(), None
    if cfg.use_reference:
        k = len(refs)  # the batch is [src, ref_1..ref_K] (doubled, uncond first, at inversion guidance != 1)
        feat_dtype = DTYPES[cfg.feature_dtype] if cfg.feature_dtype else None
        features = ReferenceFeatures(cfg.steps, set(feature_blocks), set(feature_steps), index=list(range(1, k + 1)),
                                     dtype=feat_dtype)
        keep = sd.unet.hooked(features, blocks=sorted(features.blocks), kinds=("self",))
        if any(r.auto for r in refs):  # auto mask_s: the conditional reference elements' word maps, same calls
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
    for i, (m, tokens) in enumerate(zip(prep.masks_s, prep.mask_tokens)):
        if m is None:
            name = "the reference" if len(prep.masks_s) == 1 else f"reference {i + 1}"
            m = auto_mask_s(inv.reference_maps[i], tokens, hw, cfg.interp, cfg.reference_thres, name)
        out.append(m)
    return out


@torch.no_grad()
def edit_stage(sd: StableDiffusion, prep: Prepared, inv: Inversion, cfg: EditConfig, progress: bool = True,
               observer: EditObserver | None = None) -> EditResult:
    """Stage 2 (SPEC §4): P2P with the reconstruction path; SR-attn in the chosen layers and steps."""
    key = stage1_key(cfg, prep.references)
    if inv.key != key:
        raise ValueError(f"this inversion was made for other stage-1 settings ({inv.key}) than {key}")
    n, z_src, ddim, sr, masks_s = cfg.steps, inv.z_src, inv.ddim, None, []
    if cfg.use_reference:
        missing = [(b, i) for b in range(*cfg.sr_layers) for i in range(*cfg.sr_steps) if (b, i) not in inv.features.kv]
        if missing:
            raise ValueError(f"the inversion kept no reference K/V for (block, step) {missing[:4]}...")
        masks_s = reference_masks_s(prep, inv, cfg)
        sr = SRPlan(inv.features, range(*cfg.sr_layers), range(*cfg.sr_steps),
                    mask_s=torch.from_numpy(np.stack(masks_s)).to(sd.device, sd.precise_dtype)
                    if cfg.masks in ("both", "s") else None,
                    target_tokens=prep.target_tokens, thres=cfg.thres, interp=cfg.interp,
                    groups=prep.groups)
    t0 = time.perf_counter()
    ctrl = EditController(prep.plan.to(sd.device, sd.precise_dtype), sr, tuple(z_src.shape[-2:]), observer)
    context = sd.encode_prompts(["", "", cfg.source_prompt, cfg.target_prompt])  # [u, u, c_src, c_tgt]
    x = torch.stack([z_src[n], z_src[n]])
    with sd.unet.hooked(ctrl):
        for i, t in enumerate(tqdm(ddim.timesteps.tolist(), desc="edit", disable=not progress)):
            x[0] = z_src[n - i]  # reconstruction path follows the inverted trajectory ("FEC-ref")
            x_in = x.clone() if observer is not None else x
            eps = sampling.batch_eps(sd, x, t, context, step=i)  # [u_src, u_tgt, c_src, c_tgt]
            x = ctrl.local_blend(i, ddim.step(sampling.guide(eps, cfg.guidance, 2), t, x))
            if observer is not None:
                observer.on_step(i, t, x_in, eps, x)
    if observer is not None:
        observer.on_finish(ctrl.map_sum)
    seconds = time.perf_counter() - t0
    t1 = time.perf_counter()
    out = sampling.decode(sd, x)
    timings = {"invert": inv.seconds, "edit": seconds, "decode": time.perf_counter() - t1}
    return EditResult(
        edit=to_pil(out[1], prep.source.size), reconstruction=to_pil(out[0], prep.source.size),
        mask_s=masks_s[0] if masks_s else None,
        mask_t=ctrl.last_mask_t if sr is not None and sr.target_tokens is not None else None,
        latents={"source_inverted": z_src, "reconstruction_latent": x[:1].clone(), "edit_latent": x[1:].clone()},
        config=cfg, working_size=prep.size, timings=timings, feature_bytes=sr.features.nbytes() if sr else 0,
        blend_mask=ctrl.last_blend,
        masks_s=masks_s, masks_t={",".join(g.words): m for g, m in zip(sr.groups, ctrl.last_masks_t)} if sr else {})


@torch.no_grad()
def edit(sd: StableDiffusion, source: str | Path | Image.Image,
         reference: str | Path | Image.Image | Reference | list[Reference | str | Path | Image.Image] | None,
         config: EditConfig, reference_mask_file: str | Path | Image.Image | None = None,
         progress: bool = True, observer: EditObserver | None = None, inspect: bool = False) -> EditResult:
    """Edit `source` so that the target words' region becomes the reference object (SPEC §3-§4); `reference` may
    be one image (with `reference_mask_file`, or "auto") or a list of `Reference`s (views, one per target word).

    inspect=True records what stage 2 computes (result.inspection, a specref.trace.Recorder: per-step latents,
    masks, the word maps, SR-attn's change and reference mass); the edit itself is the same.
    """
    if inspect and observer is not None:
        raise ValueError("give inspect=True or an observer, not both")
    t0 = time.perf_counter()
    cfg, prep = prepare(sd, source, reference, config, reference_mask_file)
    inv = invert(sd, prep, cfg, range(*cfg.sr_layers), range(*cfg.sr_steps), progress)
    if inspect:
        observer = Recorder(inv.ddim, cfg.guidance, sr=True, x0_steps=x0_steps(cfg.steps))
    result = edit_stage(sd, prep, inv, cfg, progress, observer)
    result.inspection = observer if inspect else None
    result.timings["total"] = time.perf_counter() - t0
    return result


def x0_steps(n: int, count: int = 5) -> tuple[int, ...]:
    """The steps whose predicted x0 an inspection keeps: `count` spread from the first to the last."""
    return tuple(sorted({round(k * (n - 1) / max(1, count - 1)) for k in range(count)}))
