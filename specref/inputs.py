"""An edit's inputs, read and checked before any work (docs/spec.md §1, §3, §5): the pictures and masks (no model
needed, `read_inputs`), then the settings against the model and resolved to tensors (`prepare`)."""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from model import StableDiffusion

from .images import load_image, to_tensor, warn_if_small, working_size
from .masks import read_mask
from .p2p import P2PPlan, p2p_plan
from .references import Reference, WordGroup, as_references, check_references, word_groups
from .settings import SETTINGS, EditConfig, canonical, complete, parse_value, validate
from .words import word_token_indices


@dataclass
class Inputs:
    """The edit's pictures, read: the source and each reference with its object mask at the reference's own size
    (a bool array, or "auto" for a mask found in stage 1, §8.3)."""

    source: Image.Image
    references: list[Reference] = field(default_factory=list)  # image: a PIL image; mask: bool [H, W] or "auto"


def reference_mask(reference: Image.Image, mask: str | Path | Image.Image | None) -> np.ndarray:
    """mask_s on the reference (§4.4): a mask file (white = object) or RGBA alpha; without one, the cutout's
    non-black pixels."""
    if mask is None:
        return read_mask(reference, kind="cutout")
    m = read_mask(load_image(mask, "reference mask") if not isinstance(mask, Image.Image) else mask)
    h, w = m.shape
    if (h, w) != (reference.height, reference.width):
        # A mask saved at another resolution of the same picture (e.g. mirror-tiger's 512² mask of a 1280x1284
        # reference) is resized, as the published code resizes both; another shape is an error.
        if abs(w / h - reference.width / reference.height) > 0.02 * reference.width / reference.height:
            raise ValueError(f"reference mask is {w}x{h} but the reference image is {reference.width}x"
                             f"{reference.height}; they must be the same size (or at least the same aspect)")
        m = np.asarray(Image.fromarray(m).resize(reference.size, Image.Resampling.NEAREST))
    return m


def read_inputs(source: Any, reference: Any = None, reference_mask_file: Any = None) -> Inputs:
    """Read the source, the references and their masks; every unreadable, empty or mismatched input raises here."""
    if isinstance(source, Inputs):
        return source
    refs = as_references(reference, reference_mask_file)
    src = load_image(source, "source")
    warn_if_small(src, "source")
    names = ["reference"] if len(refs) == 1 else [f"reference {i + 1}" for i in range(len(refs))]
    read = []
    for r, name in zip(refs, names):
        image = load_image(r.image, name)
        warn_if_small(image, name)
        mask = r.mask
        if not r.auto:
            mask = reference_mask(image, Image.fromarray(mask) if isinstance(mask, np.ndarray) else mask)
        read.append(Reference(image, mask, r.target_words, r.prompt, r.auto_mask_words))
    return Inputs(src, read)


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
    auto_mask_tokens: list[list[int] | None] = field(default_factory=list)  # reference-prompt tokens of auto masks
    groups: list[WordGroup] = field(default_factory=list)         # target-word groups and their references
    sources: dict[str, str] = field(default_factory=dict)        # settings filled from the model or the defaults


def model_defaults(sd: StableDiffusion) -> dict[str, Any]:
    """What the model says about the settings left open (§8.4): its native size and its specref.json defaults,
    parsed and checked as the settings are (only settings whose default is the model's may be set there)."""
    out: dict[str, Any] = {"size": sd.native_size}
    for name, value in sd.extra.get("edit_defaults", {}).items():
        key = canonical(name)
        if key not in SETTINGS or not SETTINGS[key].by_model:
            allowed = [n for n, s in SETTINGS.items() if s.by_model]
            raise ValueError(f"{sd.source}: specref.json sets {name!r}; a model can set only {', '.join(allowed)}")
        try:
            out[key] = parse_value(key, value)
        except ValueError as e:
            raise ValueError(f"{sd.source}: specref.json: {e}") from None
    return out


def check_model(cfg: EditConfig, sd: StableDiffusion) -> None:
    """The settings against the loaded model, before stage 1: block indices, the map level, the prompts' length."""
    levels = sd.unet.block_levels()
    l0, l1 = cfg.sr_layers
    if cfg.use_reference and l1 > len(levels):
        raise ValueError(f"--sr-layers {l0}-{l1} is out of bounds: this model's self-attention blocks are 0-"
                         f"{len(levels) - 1} (need 0 <= start < end <= {len(levels)})")
    if any(b not in levels for b in cfg.map_blocks):
        raise ValueError(f"--map-blocks must be cross-attention block indices ({min(levels)}-{max(levels)}), "
                         f"got {tuple(cfg.map_blocks)}")
    if len({levels[b] for b in cfg.map_blocks}) > 1:
        raise ValueError(f"--map-blocks {tuple(cfg.map_blocks)} have maps of different sizes (levels "
                         f"{[levels[b] for b in cfg.map_blocks]}); their maps are summed, so pick blocks of one level")
    uses_mask_t = cfg.use_reference and cfg.masks in ("both", "t")
    if uses_mask_t and cfg.sr_steps[0] == 0 and min(cfg.map_blocks) >= l0:
        raise ValueError(f"mask_t at SR step 0 needs a map from a block before the first SR layer {l0}, but "
                         f"map_blocks start at {min(cfg.map_blocks)}: start the SR steps at 1 or later")
    for p in (cfg.source_prompt, cfg.target_prompt, cfg.reference_prompt):
        if sd.tokenizer.encode(p).truncated:
            warnings.warn(f"prompt is longer than {sd.tokenizer.max_length} tokens and is truncated as CLIP does: "
                          f"{p!r}")


def available_memory(device: torch.device) -> int | None:
    """Bytes the edit can still use: CUDA's free memory, or the host's MemAvailable (None where unknown)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_memory(cfg: EditConfig, sd: StableDiffusion, size: tuple[int, int], references: int) -> None:
    """Refuse a working size whose largest buffers do not fit, before stage 1 (§5): the P2P self-attention maps at
    the largest replaced layer (latent/2: 4 rows x heads x N², scores and probabilities) and the kept K/V."""
    h, w = size[1] // 8, size[0] // 8
    elt = torch.finfo(sd.precise_dtype).bits // 8
    need, what = 0, []
    if cfg.self_replace_steps not in (0, 0.0, (0, 0)):
        n = (h // 2) * (w // 2)
        maps = 2 * 4 * sd.unet.config.heads[min(1, len(sd.unet.config.heads) - 1)] * n * n * elt
        need, what = need + maps, what + [f"P2P's self-attention maps at {w // 2}x{h // 2}: {maps / 2**30:.1f} GiB"]
    if cfg.use_reference:
        levels, chans = sd.unet.block_levels(), sd.unet.config.block_out_channels
        kv = sum(2 * references * (h >> levels[b]) * (w >> levels[b]) * chans[levels[b]] * elt
                 for b in range(*cfg.sr_layers)) * (cfg.sr_steps[1] - cfg.sr_steps[0])
        need, what = need + kv, what + [f"the kept reference K/V: {kv / 2**30:.1f} GiB"]
    have = available_memory(sd.device)
    if have is not None and need > have:
        raise ValueError(f"working size {size[0]}x{size[1]} needs about {need / 2**30:.1f} GiB ({'; '.join(what)}) "
                         f"but {have / 2**30:.1f} GiB is free: use a smaller --size")


def _auto_tokens(sd: StableDiffusion, cfg: EditConfig, ref: Reference) -> list[int]:
    """Reference-prompt token positions an auto mask_s reads (§8.3; the words are checked by check_references)."""
    words = cfg.auto_mask_words if ref.auto_mask_words is None else ref.auto_mask_words
    prompt = cfg.reference_prompt if ref.prompt is None else ref.prompt
    return sorted({i for w in words for i in word_token_indices(sd.tokenizer, prompt, w)})


def prepare(sd: StableDiffusion, source: Any, reference: Any, cfg: EditConfig,
            reference_mask_file: Any = None) -> tuple[EditConfig, Prepared]:
    """Resolve and check the settings and read the inputs; every bad input raises here, before any model call.
    Returns the resolved settings (model defaults filled in, §8.4) and the prepared inputs."""
    inputs = read_inputs(source, reference if cfg.use_reference else None, reference_mask_file)
    refs = inputs.references if cfg.use_reference else []
    cfg = cfg.replace(use_reference=cfg.use_reference and bool(refs))
    groups: list[WordGroup] = []
    if cfg.use_reference:
        target_words, groups = word_groups(cfg.target_words, refs)  # with --for, the bound words are the target's
        cfg = cfg.replace(target_words=target_words) if target_words != tuple(cfg.target_words) else cfg
    cfg, sources = complete(cfg, model_defaults(sd))
    validate(cfg)
    check_references(cfg, refs)
    check_model(cfg, sd)
    names = ["reference"] if len(refs) == 1 else [f"reference {i + 1}" for i in range(len(refs))]
    auto_tokens = [_auto_tokens(sd, cfg, r) if r.auto else None for r in refs]
    for r in refs:  # (cfg.reference_prompt is checked by check_model)
        if r.prompt is not None and sd.tokenizer.encode(r.prompt).truncated:
            warnings.warn(f"reference prompt is longer than {sd.tokenizer.max_length} tokens and is truncated")
    plan = p2p_plan(cfg, sd.tokenizer)
    size = working_size(inputs.source.width, inputs.source.height, cfg.size)
    check_memory(cfg, sd, size, len(refs))
    images, masks, tokens = [to_tensor(inputs.source, size, sd.precise_dtype)], [], None
    for r, name in zip(refs, names):
        mask_np = None
        if not r.auto:
            mask_np = np.asarray(Image.fromarray(r.mask).resize(size, Image.Resampling.NEAREST))
            if not mask_np.any():
                raise ValueError(f"{name} mask is empty at the working size {size[0]}x{size[1]}")
        masks.append(mask_np)
        # every reference at the source's working size (resized like the one reference of §3): one batch
        images.append(to_tensor(r.image, size, sd.precise_dtype))
    if cfg.use_reference and cfg.masks in ("both", "t"):
        def find(words: tuple[str, ...]) -> list[int]:
            return sorted({i for w in words for i in word_token_indices(sd.tokenizer, cfg.target_prompt, w)})

        tokens = find(cfg.target_words)
        groups = [WordGroup(g.words, g.refs, find(g.words)) for g in groups]
    prep = Prepared(inputs.source, torch.cat(images), size, plan, tokens, refs, masks, auto_tokens, groups, sources)
    return cfg, prep
