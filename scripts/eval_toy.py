#!/usr/bin/env python
"""Measure what the embedded demo model does: the numbers in assets/toy-sd/README.md, and the tests' metrics.

    python scripts/eval_toy.py [--model assets/toy-sd] [--samples 2]

1. Text-to-image: for prompts naming colour, texture, shape and background, is the generated object (pixels
   unlike the border) of the named colour (nearest named colour), shape (best IoU against the drawn shapes) and
   texture (plain vs textured), on the named background?
2. Reconstruction: DDIM-invert the model's own scenes and regenerate them; PSNR to the source.
3. Edits on the shipped example: background PSNR outside the dilated source object, and inside it the
   distance of the colour histogram to the reference and the source object, and the texture energy; for
   SpecRef, the P2P baseline and the mask ablations.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFilter

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]

import sampling  # noqa: E402
import specref  # noqa: E402
import weights  # noqa: E402
from model import StableDiffusion  # noqa: E402
from specref.images import psnr, to_pil, to_tensor  # noqa: E402
from toy_scenes import BACKGROUNDS, COLOURS, SHAPES, Scene, draw  # noqa: E402

EXAMPLE = ROOT / "assets" / "examples" / "toy-checker"


# --- image measures ------------------------------------------------------------------------------------------

def arr(img: Image.Image) -> np.ndarray:
    """PIL -> float [H, W, 3] in 0..255."""
    return np.asarray(img.convert("RGB"), np.float64)


def dilate(mask: np.ndarray, px: int) -> np.ndarray:
    """Binary dilation by a (2px+1)² square."""
    img = Image.fromarray(mask.astype(np.uint8) * 255).filter(ImageFilter.MaxFilter(2 * px + 1))
    return np.asarray(img) > 127


def erode(mask: np.ndarray, px: int) -> np.ndarray:
    """Binary erosion by a (2px+1)² square."""
    return ~dilate(~mask, px)


def colour_hist(img: Image.Image, where: np.ndarray, bins: int = 4) -> np.ndarray:
    """Normalised RGB histogram (bins³) of the pixels where `where` is True."""
    q = (arr(img)[where] // (256 / bins)).astype(int)
    h = np.bincount(q[:, 0] * bins * bins + q[:, 1] * bins + q[:, 2], minlength=bins**3).astype(np.float64)
    return h / max(h.sum(), 1)


def hist_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Total-variation distance between two normalised histograms, in [0, 1]."""
    return float(0.5 * np.abs(a - b).sum())


def texture_energy(img: Image.Image, where: np.ndarray) -> float:
    """Standard deviation of the luminance where `where` is True: ~0 for a plain object, large for a textured one."""
    lum = arr(img) @ np.array([0.299, 0.587, 0.114])
    return float(lum[where].std())


def pattern_fraction(img: Image.Image, where: np.ndarray) -> float:
    """Fraction of the pixels where `where` is True that are in a texture's dark colour: luminance below half
    of the region's bright level (90th percentile). A checker is ~0.5; a plain object, or one on gray, ~0."""
    lum = (arr(img) @ np.array([0.299, 0.587, 0.114]))[where]
    return float((lum < 0.5 * np.percentile(lum, 90)).mean())


def nearest(colour: np.ndarray, table: dict[str, tuple[int, int, int]]) -> str:
    """The name in `table` of the colour nearest to `colour` (RGB)."""
    return min(table, key=lambda k: float(((np.array(table[k]) - colour) ** 2).sum()))


@dataclass
class Reading:
    """What a generated image shows."""

    colour: str
    shape: str
    textured: bool
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
        return Reading("none", "none", False, nearest(bg, BACKGROUNDS))
    ys, xs = np.nonzero(obj)
    cy, cx, r = ys.mean() / a.shape[0], xs.mean() / a.shape[1], np.sqrt(obj.mean() / np.pi)

    def iou(shape: str) -> float:
        best = 0.0
        for rr in np.linspace(0.7, 1.4, 8) * r:
            m = np.asarray(draw(Scene(shape, "white", "plain", "black", cx, cy, rr), a.shape[0])[1]) > 127
            best = max(best, (m & obj).sum() / max((m | obj).sum(), 1))
        return best

    inner = erode(obj, 3) if erode(obj, 3).sum() > 20 else obj
    return Reading(object_colour(img, inner), max(SHAPES, key=iou), texture_energy(img, inner) > 25,
                   nearest(bg, BACKGROUNDS))


def object_colour(img: Image.Image, where: np.ndarray) -> str:
    """The named colour (toy_scenes.COLOURS) of the brighter half of the pixels where `where` is True."""
    pix = arr(img)[where]
    bright = pix[pix.sum(-1) >= np.median(pix.sum(-1))]  # a texture's second colour is the darker one
    return nearest(np.median(bright, axis=0), COLOURS)


# --- model-level measurements ----------------------------------------------------------------------------------

def sample_image(sd: StableDiffusion, prompt: str, seed: int = 0, steps: int = 30, guidance: float = 5.0) -> Image.Image:
    """One text-to-image sample at the model's native size."""
    return to_pil(sampling.decode(sd, sampling.sample(sd, prompt, guidance=guidance, steps=steps, seed=seed,
                                                      progress=False))[0])


def text_to_image(sd: StableDiffusion, scenes: list[Scene], seeds: int = 2, steps: int = 30,
                  guidance: float = 5.0, images: list[Image.Image] | None = None) -> dict[str, float]:
    """Fraction of samples whose colour, shape, texture (plain vs not), background match the prompt.

    The samples are appended to `images` when given (scene-major, then seed)."""
    hits = {"colour": 0, "shape": 0, "texture": 0, "background": 0}
    n = 0
    for scene in scenes:
        for seed in range(seeds):
            img = sample_image(sd, scene.caption(), seed, steps, guidance)
            got = read_scene(img)
            if images is not None:
                images.append(img)
            hits["colour"] += got.colour == scene.colour
            hits["shape"] += got.shape == scene.shape
            hits["texture"] += got.textured == (scene.texture != "plain")
            hits["background"] += got.background == scene.background
            n += 1
    return {k: v / n for k, v in hits.items()}


def reconstruction_psnr(sd: StableDiffusion, scene: Scene, steps: int = 50) -> tuple[float, float]:
    """(PSNR of invert-then-regenerate, PSNR of the VAE alone) for one scene, with its caption as prompt."""
    src = draw(scene, sd.native_size)[0]
    z0 = sampling.encode(sd, to_tensor(src, src.size))
    lat = sampling.reconstruct(sd, z0, scene.caption(), steps=steps, progress=False)
    return psnr(to_pil(sampling.decode(sd, lat)[0]), src), psnr(to_pil(sampling.decode(sd, z0)[0]), src)


# A prompt-only Prompt-to-Prompt edit of the example's source (no reference): the object's colour word changes.
COLOUR_EDIT = ["--source-prompt", "a red circle on a gray background", "--target-prompt",
               "a blue circle on a gray background", "--mode", "refine", "--blend-words", "red;blue",
               "--self-replace-steps", "0.4"]


def example_config(steps: int = 50, flags: list[str] | None = None, **changes: object) -> specref.EditConfig:
    """The shipped example's edit (scripts/demo.py's flags, or `flags`) as an EditConfig."""
    from demo import EDIT

    from specref.cli import build_parser, edit_config
    args = build_parser().parse_args(["edit", "--source", "s", "--reference", "r", *(flags or EDIT),
                                      "--steps", str(steps), "--sr-steps", f"{round(10 * steps / 50)}-{steps}"])
    return edit_config(args).replace(**changes)


def run_example(sd: StableDiffusion, cfg: specref.EditConfig) -> specref.EditResult:
    """The shipped example edited with `cfg`."""
    return specref.edit(sd, EXAMPLE / "source.png", EXAMPLE / "reference.png", cfg,
                        reference_mask_file=EXAMPLE / "reference_mask.png", progress=False)


def source_regions(size: int) -> tuple[np.ndarray, np.ndarray]:
    """(inside, outside) of the shipped example's source object at `size`²: eroded by 3 px, and the complement
    of the object dilated by 8 px (drawn by the scene code, not segmented)."""
    from demo import SOURCE
    obj = np.asarray(draw(SOURCE, size)[1]) > 127
    return erode(obj, 3), ~dilate(obj, 8)


def edit_metrics(res: specref.EditResult) -> dict[str, float]:
    """An edit of the shipped example measured against its source and reference (regions from the scene code)."""
    from demo import REFERENCE
    src, ref = Image.open(EXAMPLE / "source.png"), Image.open(EXAMPLE / "reference.png")
    (inside, outside), ref_in = source_regions(src.width), erode(np.asarray(draw(REFERENCE, ref.width)[1]) > 127, 3)
    h_edit, h_ref = colour_hist(res.edit, inside), colour_hist(ref, ref_in)
    return {"background_psnr": psnr(res.edit, src, outside), "reconstruction_psnr": psnr(res.reconstruction, src),
            "hist_to_reference": hist_distance(h_edit, h_ref),
            "hist_to_source": hist_distance(h_edit, colour_hist(src, inside)),
            "texture_edit": texture_energy(res.edit, inside), "texture_reference": texture_energy(ref, ref_in),
            "pattern_edit": pattern_fraction(res.edit, inside), "pattern_reference": pattern_fraction(ref, ref_in),
            "pattern_source": pattern_fraction(src, inside)}


# Plain objects off-centre, for how well mask_t (the target word's blend-level cross-attention, SPEC §4.4)
# finds the object: the method edits where mask_t is.
MASK_T_SCENES = [Scene("circle", "red", "plain", "gray"), Scene("square", "blue", "plain", "white", 0.45, 0.55, 0.22),
                 Scene("triangle", "green", "plain", "black", 0.6, 0.45, 0.25)]


def mask_t_iou(sd: StableDiffusion, scene: Scene, cfg: specref.EditConfig) -> float:
    """IoU at the latent size between the object and the mask_t of a SpecRef edit of `scene` into its caption
    without the colour (target word: the shape), with the shipped example's reference and `cfg`'s settings."""
    src, obj = draw(scene, sd.native_size)
    cfg = cfg.replace(source_prompt=scene.caption(), target_prompt=scene.caption(colour=False),
                      target_words=(scene.shape,), blend_words=((scene.colour, scene.shape), (scene.shape,)))
    res = specref.edit(sd, src, EXAMPLE / "reference.png", cfg, reference_mask_file=EXAMPLE / "reference_mask.png",
                       progress=False)
    mt = res.mask_t.cpu().numpy()
    obj = np.asarray(obj.resize(mt.shape[::-1], Image.Resampling.BOX)) > 127
    return float((mt & obj).sum() / max((mt | obj).sum(), 1))


def colour_edit_metrics(res: specref.EditResult) -> dict[str, float | str]:
    """The red -> blue circle edit (COLOUR_EDIT) measured: the region's named colour, its colour histogram's
    distance to a drawn blue circle and to the red source, and the background PSNR."""
    from demo import SOURCE
    src = Image.open(EXAMPLE / "source.png")
    inside, outside = source_regions(src.width)
    h_edit = colour_hist(res.edit, inside)
    return {"colour": object_colour(res.edit, inside), "background_psnr": psnr(res.edit, src, outside),
            "hist_to_blue": hist_distance(h_edit, colour_hist(draw(SOURCE.with_(colour="blue"), src.width)[0], inside)),
            "hist_to_source": hist_distance(h_edit, colour_hist(src, inside))}


def agreement(a: specref.EditResult, b: specref.EditResult) -> dict[str, float]:
    """Two edits of the shipped example compared: PSNR over the whole image and outside the dilated source
    object, and the fraction of mask_t pixels that agree."""
    outside = source_regions(a.edit.width)[1]
    return {"psnr": psnr(a.edit, b.edit), "psnr_outside": psnr(a.edit, b.edit, outside),
            "mask_t": float((a.mask_t == b.mask_t).float().mean())}


EVAL_SCENES = [Scene(s, c, t, b) for s, c, t, b in [
    ("circle", "red", "plain", "gray"), ("square", "blue", "striped", "white"), ("triangle", "yellow", "plain", "black"),
    ("star", "green", "checkered", "brown"), ("circle", "purple", "dotted", "blue"), ("square", "orange", "plain", "green"),
    ("star", "white", "plain", "blue"), ("triangle", "red", "checkered", "gray")]]


def main() -> int:
    """Print every measurement as markdown tables."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None)
    p.add_argument("--samples", type=int, default=2, help="seeds per text-to-image prompt")
    p.add_argument("--grid", default=None, help="also save the text-to-image samples as one PNG (a row per prompt)")
    args = p.parse_args()
    sd = weights.load_model(args.model)
    images: list[Image.Image] = []
    acc = text_to_image(sd, EVAL_SCENES, seeds=args.samples, images=images)
    if args.grid:
        w = images[0].width
        grid = Image.new("RGB", (w * args.samples, w * len(EVAL_SCENES)))
        for i, im in enumerate(images):
            grid.paste(im, (i % args.samples * w, i // args.samples * w))
        grid.save(args.grid)
    print("| text-to-image (30 steps, w=5) | " + " | ".join(acc) + " |\n|---|" + "---|" * len(acc))
    print(f"| fraction right ({len(EVAL_SCENES)} prompts x {args.samples} seeds) | "
          + " | ".join(f"{v:.2f}" for v in acc.values()) + " |\n")
    print("| scene | reconstruction PSNR (50 steps) | VAE alone |\n|---|---|---|")
    for scene in EVAL_SCENES[:4]:
        r, v = reconstruction_psnr(sd, scene)
        print(f"| {scene.caption()} | {r:.2f} dB | {v:.2f} dB |")
    runs = {"SpecRef (both masks)": {}, "P2P baseline (no reference)": {"use_reference": False},
            "only mask_s (no mask_t)": {"masks": "s"}, "only mask_t": {"masks": "t"}, "no masks": {"masks": "none"}}
    results = {name: run_example(sd, example_config(**ch)) for name, ch in runs.items()}
    rows = {name: edit_metrics(r) for name, r in results.items()}
    keys = list(next(iter(rows.values())))
    print("\n| edit | " + " | ".join(keys) + " |\n|---|" + "---|" * len(keys))
    for name, m in rows.items():
        print(f"| {name} | " + " | ".join(f"{m[k]:.3f}" for k in keys) + " |")
    ious = [mask_t_iou(sd, scene, example_config()) for scene in MASK_T_SCENES]
    print("\nmask_t vs the object (IoU at the latent size): "
          + ", ".join(f"{sc.shape} {v:.2f}" for sc, v in zip(MASK_T_SCENES, ious)) + f"; mean {np.mean(ious):.2f}")
    colour = colour_edit_metrics(run_example(sd, example_config(flags=COLOUR_EDIT, use_reference=False)))
    print("\nP2P 'a red circle' -> 'a blue circle' (no reference): "
          + ", ".join(f"{k} {v if isinstance(v, str) else round(v, 3)}" for k, v in colour.items()))
    half = run_example(weights.load_model(args.model, dtype=torch.bfloat16), example_config())
    ag = agreement(results["SpecRef (both masks)"], half)
    print(f"\nbfloat16 vs float32 SpecRef edit: PSNR {ag['psnr']:.2f} dB ({ag['psnr_outside']:.2f} dB outside the "
          f"region), mask_t agreement {ag['mask_t']:.4f}; pattern {edit_metrics(half)['pattern_edit']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
