#!/usr/bin/env python
"""Measure what the embedded demo model does: the numbers in assets/toy-sd/README.md, and the tests' metrics.

    python scripts/toy/evaluate.py [--model assets/toy-sd] [--only t2i,recon,words,masks,examples,extra]
        [--quick] [--json out/toy-eval.json] [--grid samples.png] [--edits edits.png]

- t2i: text-to-image: for prompts naming colour, texture, shape and background, is the generated object (pixels
  unlike the border) of the named colour (nearest named colour), shape (best IoU against the drawn shapes) and
  texture (the kind: plain or the drawn texture it correlates with best), on the named background?
- recon: DDIM-invert the model's own scenes (one and two objects) and regenerate them; PSNR to the source.
- words: where each object word's cross-attention goes at the model's word level (its map blocks, heads and layers
  averaged, summed over the steps while the model regenerates an inverted scene): the share of its mass above its
  minimum inside its object, on 100 held-out two-object scenes.
- masks: 50 SpecRef edits of held-out two-object scenes (one object's colour word dropped, a reference star):
  mask_t's IoU with the edited object, and Local Blend's final mask (does it cover the object; how much of the
  image does it take).
- examples: the shipped examples (scripts/toy/examples.py) and 24 control references each: does each edited
  object take its reference's colour and kind of pattern; PSNR to the source outside the edit region; and the
  ablations (mask_s only, mask_t only, no Local Blend, no reference) against the full edit.
- extra: the prompt-only P2P colour edit, and bfloat16 against float32 (on a CPU with native bf16).
Every edit runs at the editor's defaults (thres 0.5, Local Blend th 0.3, bilinear) and the model's own map blocks
(its specref.json, examples.model_defaults). --quick: fewer scenes and controls, for training trials.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFilter

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]

import sampling  # noqa: E402
import specref  # noqa: E402
import weights  # noqa: E402
from model import AttentionHook, AttnSite, StableDiffusion  # noqa: E402
from toy import examples as ex  # noqa: E402
from toy.scenes import (BACKGROUNDS, COLOURS, PERIOD, SHAPES, TEXTURES, Scene, draw, draw_objects,  # noqa: E402
                        random_scene)

HELD_OUT_SEED = 10_000  # held-out scenes: not the training pool's stream (seed 0)


# --- images --------------------------------------------------------------------------------------------------

def arr(img: Image.Image) -> np.ndarray:
    """PIL -> float [H, W, 3] in 0..255."""
    return np.asarray(img.convert("RGB"), np.float64)


def to_tensor(img: Image.Image) -> torch.Tensor:
    """PIL -> [1, 3, H, W] in [-1, 1]."""
    return torch.from_numpy(arr(img) / 127.5 - 1).float().permute(2, 0, 1)[None]


def to_pil(x: torch.Tensor) -> Image.Image:
    """[3, H, W] in [-1, 1] -> PIL (rounded)."""
    a = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(a)


def psnr(a: Image.Image, b: Image.Image, where: np.ndarray | None = None) -> float:
    """PSNR in dB between two 8-bit images, optionally only where `where` is True."""
    d = (arr(a) - arr(b)) ** 2
    mse = float((d[where] if where is not None else d).mean())
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def dilate(mask: np.ndarray, px: int) -> np.ndarray:
    """Binary dilation by a (2px+1)² square."""
    img = Image.fromarray(mask.astype(np.uint8) * 255).filter(ImageFilter.MaxFilter(2 * px + 1))
    return np.asarray(img) > 127


def erode(mask: np.ndarray, px: int) -> np.ndarray:
    """Binary erosion by a (2px+1)² square."""
    return ~dilate(~mask, px)


def at_size(mask: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """A bool mask at another size: cells at least half covered (box filter)."""
    return np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize(hw[::-1], Image.Resampling.BOX)) > 127


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def colour_hist(img: Image.Image, where: np.ndarray, bins: int = 4) -> np.ndarray:
    """Normalised RGB histogram (bins³) of the pixels where `where` is True."""
    q = (arr(img)[where] // (256 / bins)).astype(int)
    h = np.bincount(q[:, 0] * bins * bins + q[:, 1] * bins + q[:, 2], minlength=bins**3).astype(np.float64)
    return h / max(h.sum(), 1)


def hist_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Total-variation distance between two normalised histograms, in [0, 1]."""
    return float(0.5 * np.abs(a - b).sum())


def luminance(img: Image.Image) -> np.ndarray:
    return arr(img) @ np.array([0.299, 0.587, 0.114])


def pattern_fraction(img: Image.Image, where: np.ndarray) -> float:
    """Fraction of the pixels where `where` is True that are in a texture's dark colour: luminance below half
    of the region's bright level (90th percentile). A checker is ~0.5; a plain object ~0."""
    lum = luminance(img)[where]
    return float((lum < 0.5 * np.percentile(lum, 90)).mean())


def texture_scores(img: Image.Image, where: np.ndarray) -> dict[str, float]:
    """How much the luminance where `where` is True looks like each drawn texture: normalised correlation with the
    texture's pattern, best over the pattern's phases (one period of shifts). A drawn texture scores ~1 against
    its own kind, and stripes ~0 against a checker (their frequencies differ)."""
    lum = luminance(img)[where]
    lum = lum - lum.mean()
    scores = {}
    for texture in TEXTURES[1:]:
        pattern = -ex_pattern(texture, img.width)  # dark where the pattern is
        best = -1.0
        for dy in range(0, PERIOD, 2):
            for dx in range(0, PERIOD, 2):
                tpl = np.roll(pattern, (dy, dx), axis=(0, 1))[where]
                tpl = tpl - tpl.mean()
                best = max(best, float(lum @ tpl / (np.linalg.norm(lum) * np.linalg.norm(tpl) + 1e-9)))
        scores[texture] = best
    return scores


def ex_pattern(texture: str, n: int) -> np.ndarray:
    """A texture's pattern (scenes.texture_pattern) at n², as float."""
    from toy.scenes import texture_pattern
    return texture_pattern(Scene("circle", "white", texture, "black"), n).astype(np.float64)


def nearest(colour: np.ndarray, table: dict[str, tuple[int, int, int]]) -> str:
    """The name in `table` of the colour nearest to `colour` (RGB)."""
    return min(table, key=lambda k: float(((np.array(table[k]) - colour) ** 2).sum()))


def object_colour(img: Image.Image, where: np.ndarray) -> str:
    """The named colour (scenes.COLOURS) of the brighter half of the pixels where `where` is True."""
    pix = arr(img)[where]
    bright = pix[pix.sum(-1) >= np.median(pix.sum(-1))]  # a texture's second colour is the darker one
    return nearest(np.median(bright, axis=0), COLOURS)


def region_texture(img: Image.Image, where: np.ndarray) -> str:
    """The texture a region shows: "plain" if under 5 % of it is in a pattern's dark colour (pattern_fraction; a
    drawn dotted circle: 0.23), else the drawn texture it correlates with best (texture_scores)."""
    if pattern_fraction(img, where) < 0.05:
        return "plain"
    scores = texture_scores(img, where)
    return max(scores, key=scores.__getitem__)


def looks(img: Image.Image, where: np.ndarray) -> dict[str, object]:
    """What a region shows: named colour, kind of texture, pattern fraction."""
    return {"colour": object_colour(img, where), "texture": region_texture(img, where),
            "pattern": pattern_fraction(img, where)}


# --- text-to-image and reconstruction ----------------------------------------------------------------------------

@dataclass
class Reading:
    """What a generated image shows."""

    colour: str
    shape: str
    texture: str
    background: str


def read_scene(img: Image.Image) -> Reading:
    """Segment the object (pixels far from the border's median colour) and name its colour, shape, texture."""
    a = arr(img)
    border = np.concatenate([a[:4].reshape(-1, 3), a[-4:].reshape(-1, 3), a[:, :4].reshape(-1, 3),
                             a[:, -4:].reshape(-1, 3)])
    bg = np.median(border, axis=0)
    obj = np.sqrt(((a - bg) ** 2).sum(-1)) > 60
    obj = erode(dilate(obj, 4), 4)  # close the gaps a texture leaves
    if obj.sum() < 50:
        return Reading("none", "none", "none", nearest(bg, BACKGROUNDS))
    ys, xs = np.nonzero(obj)
    cy, cx, r = ys.mean() / a.shape[0], xs.mean() / a.shape[1], np.sqrt(obj.mean() / np.pi)

    def fit(shape: str) -> float:
        best = 0.0
        for rr in np.linspace(0.7, 1.4, 8) * r:
            m = np.asarray(draw(Scene(shape, "white", "plain", "black", cx, cy, rr), a.shape[0])[1]) > 127
            best = max(best, iou(m, obj))
        return best

    inner = erode(obj, 3) if erode(obj, 3).sum() > 20 else obj
    return Reading(object_colour(img, inner), max(SHAPES, key=fit), region_texture(img, inner),
                   nearest(bg, BACKGROUNDS))


def sample_image(sd: StableDiffusion, prompt: str, seed: int = 0, steps: int = 30,
                 guidance: float = 5.0) -> Image.Image:
    """One text-to-image sample at the model's native size."""
    return to_pil(sampling.decode(sd, sampling.sample(sd, prompt, guidance=guidance, steps=steps, seed=seed,
                                                      progress=False))[0])


EVAL_SCENES = [Scene(s, c, t, b) for s, c, t, b in [
    ("circle", "red", "plain", "gray"), ("square", "blue", "striped", "white"),
    ("triangle", "yellow", "plain", "black"), ("star", "green", "checkered", "brown"),
    ("circle", "purple", "dotted", "blue"), ("square", "orange", "plain", "green"),
    ("star", "white", "plain", "blue"), ("triangle", "red", "checkered", "gray")]]


def text_to_image(sd: StableDiffusion, scenes: list[Scene] = EVAL_SCENES, seeds: int = 2, steps: int = 30,
                  guidance: float = 5.0, images: list[Image.Image] | None = None) -> dict[str, float]:
    """Fraction of samples whose colour, shape, kind of texture and background match the prompt (appended to
    `images` when given, scene-major, then seed)."""
    hits = {"colour": 0, "shape": 0, "texture kind": 0, "background": 0}
    for scene in scenes:
        for seed in range(seeds):
            img = sample_image(sd, scene.caption(), seed, steps, guidance)
            got = read_scene(img)
            if images is not None:
                images.append(img)
            hits["colour"] += got.colour == scene.colour
            hits["shape"] += got.shape == scene.shape
            hits["texture kind"] += got.texture == scene.texture
            hits["background"] += got.background == scene.background
    return {k: v / (len(scenes) * seeds) for k, v in hits.items()}


def reconstruction_psnr(sd: StableDiffusion, scene: Scene, steps: int = 50) -> tuple[float, float]:
    """(PSNR of invert-then-regenerate, PSNR of the VAE alone) for one scene, with its caption as prompt."""
    src = draw(scene, sd.native_size)[0]
    z0 = sampling.encode(sd, to_tensor(src))
    lat = sampling.reconstruct(sd, z0, scene.caption(), steps=steps, progress=False)
    return psnr(to_pil(sampling.decode(sd, lat)[0]), src), psnr(to_pil(sampling.decode(sd, z0)[0]), src)


def held_out(n: int, two: float = 1.0, seed: int = HELD_OUT_SEED) -> list[Scene]:
    """n random scenes (two objects with probability `two`) from a stream the training pool does not use."""
    rng = np.random.default_rng(seed)
    return [random_scene(rng, two) for _ in range(n)]


# --- where the words go ----------------------------------------------------------------------------------------

class CrossAttentionMaps(AttentionHook):
    """Sums the cross-attention probabilities of the layers it is set on (heads averaged) over layers and calls:
    [B, h*w, 77] for the batch's last B elements (the conditional ones)."""

    def __init__(self, batch: int):
        self.batch, self.total, self.hw = batch, None, (0, 0)

    def needs_probs(self, site: AttnSite, step: int | None) -> bool:
        return site.kind == "cross"

    def edit_probs(self, site: AttnSite, step: int | None, probs: torch.Tensor) -> torch.Tensor:
        m = probs[-self.batch:].float().mean(1)
        self.total = m if self.total is None else self.total + m
        self.hw = (site.height, site.width)
        return probs


@torch.no_grad()
def word_maps(sd: StableDiffusion, scenes: list[Scene], blocks: tuple[int, ...], steps: int = 50) -> torch.Tensor:
    """[B, h, w, 77]: the cross-attention of `blocks` while the model regenerates each inverted scene with its
    caption (guidance 1), summed over the layers and steps. Batched."""
    images = [draw(s, sd.native_size)[0] for s in scenes]
    captions = [s.caption() for s in scenes]
    z0 = sampling.encode(sd, torch.cat([to_tensor(im) for im in images]))
    zs = sampling.invert(sd, z0, captions, steps=steps, progress=False)
    rec = CrossAttentionMaps(len(scenes))
    with sd.unet.hooked(rec, list(blocks), ("cross",)):
        sampling.sample(sd, captions, guidance=1.0, latents=zs[-1], steps=steps, progress=False)
    return rec.total.reshape(len(scenes), *rec.hw, -1)


def mass_inside(tile: np.ndarray, region: np.ndarray) -> float:
    """Share of a map's mass above its minimum inside `region` (bool at any size; its cover of each map cell)."""
    v = tile - tile.min()
    cover = np.asarray(Image.fromarray(region.astype(np.uint8) * 255).resize(tile.shape[::-1],
                                                                             Image.Resampling.BOX)) / 255
    return float((v * cover).sum() / max(v.sum(), 1e-12))


def word_tokens(sd: StableDiffusion, scene: Scene) -> list[tuple[str, int | None, list[int]]]:
    """(word, role, token positions) of every word of the scene's full caption with a role (scenes.caption_words)."""
    words = scene.caption_words()
    caption = " ".join(w for w, _ in words)
    spans = sd.tokenizer.encode(caption).spans
    out, start = [], 0
    for w, role in words:
        toks = [k + 1 for k, (s, e) in enumerate(spans) if s < start + len(w) and e > start]
        if role is not None:
            out.append((w, role, toks))
        start += len(w) + 1
    return out


def word_mass(sd: StableDiffusion, scenes: list[Scene], blocks: tuple[int, ...], steps: int = 50,
              batch: int = 10) -> list[dict]:
    """Per scene and captioned word: its share of mass (above its minimum) on its own place (its object; the
    background words: what no object covers), and the object's share of the image."""
    rows = []
    for i in range(0, len(scenes), batch):
        chunk = scenes[i:i + batch]
        maps = word_maps(sd, chunk, blocks, steps).numpy()
        for scene, m in zip(chunk, maps):
            masks = [np.asarray(x) > 127 for x in draw_objects(scene, sd.native_size)[1]]
            for w, role, toks in word_tokens(sd, scene):
                place = ~np.any(masks, axis=0) if role == -1 else masks[role]
                rows.append({"word": w, "role": role, "kind": "background" if role == -1 else word_kind(w),
                             "mass": mass_inside(m[..., toks].sum(-1), place), "area": float(place.mean())})
    return rows


def word_kind(word: str) -> str:
    """An object word's kind: shape, texture or colour."""
    return "shape" if word in SHAPES else "texture" if word in TEXTURES else "colour"


# --- edits ---------------------------------------------------------------------------------------------------

def run(sd: StableDiffusion, example: ex.Example, refs: tuple[ex.Ref, ...] | None = None, steps: int = 50,
        model: str | Path | None = None, inspect: bool = False, **changes: object) -> specref.EditResult:
    """An example's edit (with other references, if given; EditConfig fields changed by `changes`)."""
    src, _ = draw_objects(example.source, sd.native_size)
    cfg = example.config(steps, model or sd.source, **changes)  # the model's own settings (its specref.json)
    references = example.references(sd.native_size, refs) if cfg.use_reference else None
    return specref.edit(sd, src, references, cfg, progress=False, inspect=inspect)


def regions(example: ex.Example, size: int) -> tuple[list[np.ndarray], np.ndarray]:
    """(each edited object's mask, eroded by 3 px; outside = not within 8 px of an edited object)."""
    masks = [np.asarray(m) > 127 for m in draw_objects(example.source, size)[1]]
    edited = [masks[i] for i in example.edited]
    return [erode(m, 3) for m in edited], ~dilate(np.any(edited, axis=0), 8)


def measured(sd: StableDiffusion, example: ex.Example, refs: tuple[ex.Ref, ...] | None = None, steps: int = 50,
             **changes: object) -> dict:
    """run + edit_metrics; an edit the editor refuses (e.g. mask_t empty at a layer: the words missed their
    object) counts as wrong, with its error."""
    try:
        return edit_metrics(example, run(sd, example, refs, steps, **changes), refs)
    except ValueError as e:
        n = len(example.edited)
        return {"error": str(e), "objects": [{"colour": "none", "texture": "none", "pattern": 0.0, "right": False}] * n,
                "right": False, "psnr_outside": 0.0, "psnr_inside": 0.0, "mask_t_iou": 0.0, "blend_cover": 0.0,
                "blend_area": 1.0}


def edit_metrics(example: ex.Example, res: specref.EditResult, refs: tuple[ex.Ref, ...] | None = None) -> dict:
    """An edit measured: per edited object, its look and whether it is its reference's (colour and kind of
    pattern); PSNR to the source outside the edit region and inside the edited objects; mask_t's IoU with the
    edited objects, Local Blend's cover of them and share of the image."""
    refs = refs or example.refs
    src, masks = draw_objects(example.source, res.edit.width)
    inside, outside = regions(example, res.edit.width)
    objects = []
    for k, where in enumerate(inside):
        ref = refs[min(k, len(refs) - 1)].scene
        got = looks(res.edit, where)
        objects.append({**got, "right": got["colour"] == ref.colour and got["texture"] == ref.texture})
    out = {"objects": objects, "right": all(o["right"] for o in objects),
           "psnr_outside": psnr(res.edit, src, outside), "psnr_inside": psnr(res.edit, src, np.any(inside, axis=0)),
           "psnr_reconstruction": psnr(res.reconstruction, src)}
    obj_lat = [at_size(np.asarray(masks[i]) > 127, tuple(res.latents["edit_latent"].shape[-2:]))
               for i in example.edited]
    if res.mask_t is not None:
        out["mask_t_iou"] = iou(res.mask_t.cpu().numpy(), np.any(obj_lat, axis=0))
    if res.blend_mask is not None:
        bm = res.blend_mask.cpu().numpy() > 0.5
        out["blend_cover"] = float(min((bm & o).sum() / max(o.sum(), 1) for o in obj_lat))
        out["blend_area"] = float(bm.mean())
    return out


ABLATIONS = {"mask_s only (--masks s)": {"masks": "s"}, "mask_t only (--masks t)": {"masks": "t"},
             "no Local Blend": {"blend_words": None}, "no reference (P2P)": {"use_reference": False}}


def differs(full: dict, other: dict) -> bool:
    """An ablation differs from the full edit measurably: another colour/pattern outcome of an edited object, or
    >= 3 dB of PSNR to the source inside or outside the edit region."""
    looks_differ = any((a["colour"], a["texture"]) != (b["colour"], b["texture"])
                       for a, b in zip(full["objects"], other["objects"]))
    return looks_differ or abs(full["psnr_outside"] - other["psnr_outside"]) >= 3 \
        or abs(full["psnr_inside"] - other["psnr_inside"]) >= 3


def evaluate_example(sd: StableDiffusion, example: ex.Example, n_controls: int = 24, steps: int = 50,
                     log=print) -> dict:
    """The example, its controls and its ablations, measured."""
    t0 = time.time()
    res = run(sd, example, steps=steps)
    full = edit_metrics(example, res)
    out = {"edit": full, "image": res.edit}
    ctl = [(refs, measured(sd, example, refs, steps)) for refs in ex.controls(example)[:n_controls]]
    out["controls"] = [{"refs": [r.scene.caption(background=False) for r in refs], **m} for refs, m in ctl]
    out["controls_right"] = sum(m["right"] for _, m in ctl) / max(len(ctl), 1)
    out["controls_psnr_outside_min"] = min((m["psnr_outside"] for _, m in ctl), default=float("nan"))
    out["ablations"] = {}
    for name, change in ABLATIONS.items():
        m = measured(sd, example, steps=steps, **change)
        out["ablations"][name] = {**m, "differs": differs(full, m)}
    out["seconds"] = time.time() - t0
    log(f"{example.name}: right {full['right']}, outside {full['psnr_outside']:.1f} dB, controls right "
        f"{out['controls_right']:.2f}, min outside {out['controls_psnr_outside_min']:.1f} dB, ablations differ "
        f"{[a['differs'] for a in out['ablations'].values()]}  ({out['seconds']:.0f}s)")
    return out


def held_out_edit(scene: Scene, which: int, ref: Scene) -> ex.Example:
    """A held-out two-object scene with object `which` edited: its colour word dropped, a reference star."""
    obj = scene.objects()[which]
    colours = tuple(i != which for i in range(len(scene.objects())))
    return ex.Example("held-out", scene, (ex.Ref(ref),), (which,),
                      (("source_prompt", scene.caption()), ("target_prompt", scene.caption(colour=colours)),
                       ("target_words", (obj.shape,)), ("blend_words", ((obj.colour, obj.shape), (obj.shape,))),
                       *ex.COMMON), "held-out edit")


def mask_edits(sd: StableDiffusion, n: int = 50, steps: int = 50, log=print) -> list[dict]:
    """n edits of held-out two-object scenes (alternately the first and the second object, a reference star of
    a colour and texture of the control set): mask_t IoU, Local Blend, and whether the object took the look."""
    rows = []
    for k, scene in enumerate(held_out(n, seed=HELD_OUT_SEED + 1)):
        c, t = ex.CONTROL_OBJECTS[k % len(ex.CONTROL_OBJECTS)]
        example = held_out_edit(scene, k % 2, Scene("star", c, t, "black"))
        m = measured(sd, example, steps=steps)
        rows.append({"scene": scene.caption(), "which": k % 2, **{k2: v for k2, v in m.items() if k2 != "objects"},
                     "look": m["objects"][0]})
        log(f"  {k}: mask_t IoU {m.get('mask_t_iou', float('nan')):.2f}, blend cover {m.get('blend_cover', 0):.2f} "
            f"area {m.get('blend_area', 1):.2f}, right {m['right']}, outside {m['psnr_outside']:.1f} dB")
    return rows


def agreement(example: ex.Example, a: specref.EditResult, b: specref.EditResult) -> dict[str, float]:
    """Two runs of one edit compared (e.g. float16 against float32): PSNR over the whole image and outside the edit
    region, and the fraction of mask_t pixels that agree."""
    outside = regions(example, a.edit.width)[1]
    return {"psnr": psnr(a.edit, b.edit), "psnr_outside": psnr(a.edit, b.edit, outside),
            "mask_t": float((a.mask_t == b.mask_t).float().mean())}


# --- extras ----------------------------------------------------------------------------------------------------

def colour_edit(sd: StableDiffusion, steps: int = 50) -> dict:
    """The prompt-only P2P edit "a red circle" -> "a blue circle" (no reference) of the shipped example's source."""
    example = ex.Example("colour", ex.ONE, (), (0,),
                         (("source_prompt", ex.ONE.caption()), ("target_prompt", ex.ONE.with_(colour="blue").caption()),
                          ("blend_words", (("red",), ("blue",))), ("use_reference", False), *ex.COMMON), "")
    res = run(sd, example, steps=steps)
    m = edit_metrics(example, res, (ex.Ref(ex.ONE.with_(colour="blue")),))
    return {"colour": m["objects"][0]["colour"], "psnr_outside": m["psnr_outside"]}


def summary(results: dict) -> dict:
    """The headline numbers of a run (what the targets are about)."""
    s: dict = {}
    if "t2i" in results:
        s["t2i"] = results["t2i"]
    if "words" in results:
        rows = results["words"]
        obj = [r["mass"] for r in rows if r["role"] != -1]
        s["word_mass_objects_mean"] = float(np.mean(obj))
        s["word_mass_objects_median"] = float(np.median(obj))
        s["word_mass_objects_ge_0.7"] = float(np.mean([v >= 0.7 for v in obj]))
        for kind in ("colour", "texture", "shape", "background"):
            v = [r["mass"] for r in rows if r["kind"] == kind]
            if v:
                s[f"word_mass_{kind}"] = float(np.mean(v))
        s["object_area_mean"] = float(np.mean([r["area"] for r in rows if r["role"] != -1]))
    if "masks" in results:
        rows = results["masks"]
        s["mask_t_iou_median"] = float(np.median([r["mask_t_iou"] for r in rows]))
        s["blend_cover_median"] = float(np.median([r["blend_cover"] for r in rows]))
        s["blend_area_median"] = float(np.median([r["blend_area"] for r in rows]))
        s["blend_area_max"] = float(np.max([r["blend_area"] for r in rows]))
        s["held_out_edits_right"] = float(np.mean([r["right"] for r in rows]))
        s["held_out_psnr_outside_median"] = float(np.median([r["psnr_outside"] for r in rows]))
    for name, e in results.get("examples", {}).items():
        s[name] = {"right": e["edit"]["right"], "psnr_outside": e["edit"]["psnr_outside"],
                   "controls_right": e["controls_right"], "controls_psnr_outside_min": e["controls_psnr_outside_min"],
                   "mask_t_iou": e["edit"].get("mask_t_iou"), "blend_area": e["edit"].get("blend_area"),
                   "ablations_differ": {k: a["differs"] for k, a in e["ablations"].items()}}
    return s


def tile_grid(images: list[Image.Image], cols: int) -> Image.Image:
    """Equal-size images in rows of `cols`, left to right, top to bottom, on white (for the model card's figures)."""
    w, h = images[0].size
    grid = Image.new("RGB", (w * cols, h * -(-len(images) // cols)), "white")
    for i, im in enumerate(images):
        grid.paste(im.convert("RGB"), (i % cols * w, i // cols * h))
    return grid


def main(argv: list[str] | None = None) -> int:
    """Run the chosen measurements; print them and write them as JSON."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None)
    p.add_argument("--only", default="t2i,recon,words,masks,examples,extra")
    p.add_argument("--quick", action="store_true", help="20 word scenes, 12 held-out edits, 6 controls per example")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps of the edits and the word maps")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--map-blocks", default=None, help="read the words at these blocks instead of the model's own "
                   "(for a model without specref.json, e.g. the previous release: 13,14,15)")
    p.add_argument("--json", default=str(ROOT / "out" / "toy-eval.json"))
    p.add_argument("--grid", default=None, help="also save the text-to-image samples as one PNG (a row per prompt)")
    p.add_argument("--edits", default=None, help="also save each example's edit and its controls' edits as one PNG")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    only = set(args.only.split(","))
    sd = weights.load_model(args.model)
    blocks = ex.model_defaults(args.model).get("map_blocks", specref.EditConfig("", "").map_blocks)
    if args.map_blocks:
        blocks = tuple(int(b) for b in args.map_blocks.split(","))
        ex.OVERRIDE.update(map_blocks=blocks)
    results: dict = {"model": str(args.model or ex.DEFAULT_MODEL), "map_blocks": list(blocks), "seconds": {}}
    log = lambda s: print(s, flush=True)  # noqa: E731

    def timed(name: str, fn):
        t0 = time.time()
        results[name] = fn()
        results["seconds"][name] = round(time.time() - t0, 1)
        log(f"{name}: {results['seconds'][name]}s")

    if "t2i" in only:
        images: list[Image.Image] = []
        timed("t2i", lambda: text_to_image(sd, images=images))
        if args.grid:
            tile_grid(images, 2).save(args.grid)
        log(f"text-to-image: {results['t2i']}")
    if "recon" in only:
        scenes = EVAL_SCENES[:4] + [ex.TWO] + held_out(3)
        timed("recon", lambda: [{"scene": s.caption(), **dict(zip(("inverted", "vae"), reconstruction_psnr(sd, s)))}
                                 for s in scenes])
        for r in results["recon"]:
            log(f"  {r['scene']}: {r['inverted']:.2f} dB (VAE {r['vae']:.2f})")
    if "words" in only:
        timed("words", lambda: word_mass(sd, held_out(20 if args.quick else 100), blocks, args.steps))
    if "masks" in only:
        timed("masks", lambda: mask_edits(sd, 12 if args.quick else 50, args.steps, log))
    if "examples" in only:
        n = 6 if args.quick else 24
        timed("examples", lambda: {e.name: evaluate_example(sd, e, n, args.steps, log) for e in ex.EXAMPLES_ALL})
        if args.edits:
            strip = [results["examples"][e.name]["image"] for e in ex.EXAMPLES_ALL]
            tile_grid(strip, len(strip)).save(args.edits)
        for e in results["examples"].values():
            e.pop("image")
    if "extra" in only:
        timed("colour_edit", lambda: colour_edit(sd, args.steps))
    results["summary"] = summary(results)
    log(json.dumps(results["summary"], indent=1))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
