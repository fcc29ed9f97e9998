#!/usr/bin/env python
"""Measure what the embedded demo model does: the numbers in assets/toy-sd/README.md, and the tests' metrics.

    python scripts/eval_toy.py [--model assets/toy-sd] [--samples 2] [--grid samples.png] [--edits edits.png]

1. Text-to-image: for prompts naming colour, texture, shape and background, is the generated object (pixels
   unlike the border) of the named colour (nearest named colour), shape (best IoU against the drawn shapes) and
   texture (plain vs textured; and the kind: plain or the drawn texture it correlates with best), on the named
   background?
2. Reconstruction: DDIM-invert the model's own scenes and regenerate them; PSNR to the source.
3. Edits on the shipped example: background PSNR outside the dilated source object, and inside it the
   distance of the colour histogram to the reference and the source object, the texture energy, the pattern
   fraction and which drawn texture the region correlates with best; for SpecRef, the P2P baseline, the mask
   ablations and SPEC's map blocks; and the same edit with a plain, striped and dotted star as the reference
   (does the region take *the reference's* texture, or just a texture?).
4. Where the words' cross-attention goes (what mask_t reads): IoU of mask_t with the object, and the shape
   word's attention on the object against elsewhere, on one- and two-object scenes.
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
from model.attention import AttentionHook, AttnSite  # noqa: E402
from specref.images import psnr, to_pil, to_tensor  # noqa: E402
from specref.config import BLEND_BLOCKS  # noqa: E402
from specref.words import word_token_indices  # noqa: E402
from demo import TOY_MAP_BLOCKS  # noqa: E402
from toy_scenes import BACKGROUNDS, COLOURS, PERIOD, SHAPES, TEXTURES, Scene, draw, texture_pattern  # noqa: E402

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


def texture_scores(img: Image.Image, where: np.ndarray, obj: Scene) -> dict[str, float]:
    """How much the luminance where `where` is True looks like each drawn texture of `obj`'s shape and place:
    normalised correlation with the texture's pattern, best over the pattern's phases (one period of shifts).
    A drawn texture scores ~1 against its own kind, and stripes ~0 against a checker (their frequencies differ)."""
    lum = (arr(img) @ np.array([0.299, 0.587, 0.114]))[where]
    lum = lum - lum.mean()
    scores = {}
    for texture in TEXTURES[1:]:
        pattern = -texture_pattern(obj.with_(texture=texture), img.width).astype(np.float64)  # dark where True
        best = -1.0
        for dy in range(0, PERIOD, 2):
            for dx in range(0, PERIOD, 2):
                tpl = np.roll(pattern, (dy, dx), axis=(0, 1))[where]
                tpl = tpl - tpl.mean()
                best = max(best, float(lum @ tpl / (np.linalg.norm(lum) * np.linalg.norm(tpl) + 1e-9)))
        scores[texture] = best
    return scores


def nearest(colour: np.ndarray, table: dict[str, tuple[int, int, int]]) -> str:
    """The name in `table` of the colour nearest to `colour` (RGB)."""
    return min(table, key=lambda k: float(((np.array(table[k]) - colour) ** 2).sum()))


@dataclass
class Reading:
    """What a generated image shows."""

    colour: str
    shape: str
    textured: bool
    texture: str  # the kind: "plain" or the drawn texture it looks most like (region_texture)
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
        return Reading("none", "none", False, "none", nearest(bg, BACKGROUNDS))
    ys, xs = np.nonzero(obj)
    cy, cx, r = ys.mean() / a.shape[0], xs.mean() / a.shape[1], np.sqrt(obj.mean() / np.pi)

    def iou(shape: str) -> float:
        best = 0.0
        for rr in np.linspace(0.7, 1.4, 8) * r:
            m = np.asarray(draw(Scene(shape, "white", "plain", "black", cx, cy, rr), a.shape[0])[1]) > 127
            best = max(best, (m & obj).sum() / max((m | obj).sum(), 1))
        return best

    inner = erode(obj, 3) if erode(obj, 3).sum() > 20 else obj
    shape = max(SHAPES, key=iou)
    scores = texture_scores(img, inner, Scene(shape, "white", "plain", "black", cx, cy, r))
    return Reading(object_colour(img, inner), shape, texture_energy(img, inner) > 25,
                   region_texture(pattern_fraction(img, inner), scores), nearest(bg, BACKGROUNDS))


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
    """Fraction of samples whose colour, shape, texture (plain vs not; its kind), background match the prompt.

    The samples are appended to `images` when given (scene-major, then seed)."""
    hits = {"colour": 0, "shape": 0, "texture": 0, "texture kind": 0, "background": 0}
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
            hits["texture kind"] += got.texture == scene.texture
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


def run_example(sd: StableDiffusion, cfg: specref.EditConfig, reference: Scene | None = None,
                inspect: bool = False) -> specref.EditResult:
    """The shipped example edited with `cfg` (with another reference scene drawn by the scene code, if given)."""
    if reference is None:
        return specref.edit(sd, EXAMPLE / "source.png", EXAMPLE / "reference.png", cfg,
                            reference_mask_file=EXAMPLE / "reference_mask.png", progress=False, inspect=inspect)
    image, mask = draw(reference, sd.native_size)
    return specref.edit(sd, EXAMPLE / "source.png", image, cfg, reference_mask_file=mask, progress=False,
                        inspect=inspect)


def inspection_metrics(res: specref.EditResult, word: str = "circle") -> dict[str, float]:
    """What --inspect shows, measured (issue 17): the share of the target word's cross-attention tile (above its
    minimum) inside the source object, and the share of SR-attn's reference mass on the reference object, per SR
    layer size; each beside the object's share of the image (what a map spread evenly would give)."""
    from demo import REFERENCE, SOURCE
    from specref.inspect import mass_inside

    rec, size = res.inspection, res.working_size[0]
    src_obj, ref_obj = (np.asarray(draw(s, size)[1]) > 127 for s in (SOURCE, REFERENCE))
    k = word_token_indices(specref_tokenizer(), res.config.target_prompt, word)
    tile = rec.maps[1][..., k].sum(-1)
    out = {"word_mass_inside": mass_inside(tile - tile.min(), src_obj), "source_object_area": float(src_obj.mean()),
           "reference_object_area": float(ref_obj.mean())}
    for (h, w), (change, mass) in rec.sr_maps().items():
        out[f"reference_mass_on_object_{h}x{w}"] = mass_inside(mass[0], ref_obj)
        out[f"change_inside_{h}x{w}"] = mass_inside(change, src_obj)
    return out


def specref_tokenizer():
    """The bundled CLIP tokenizer (the demo model's)."""
    from model import CLIPTokenizer
    return CLIPTokenizer.bundled()


# The shipped reference's controls: does the region take *the reference's* texture, or a texture? And its
# colour, or the model's prior for an uncoloured "circle"? The other yellow stars, then each pattern in three
# other colours.
REFERENCE_CONTROLS = [Scene("star", "yellow", t, "black") for t in ("plain", "striped", "dotted")]
COLOUR_CONTROLS = [Scene("star", c, t, "black") for c in ("blue", "green", "purple") for t in TEXTURES[1:]]


def source_regions(size: int) -> tuple[np.ndarray, np.ndarray]:
    """(inside, outside) of the shipped example's source object at `size`²: eroded by 3 px, and the complement
    of the object dilated by 8 px (drawn by the scene code, not segmented)."""
    from demo import SOURCE
    obj = np.asarray(draw(SOURCE, size)[1]) > 127
    return erode(obj, 3), ~dilate(obj, 8)


def edit_metrics(res: specref.EditResult) -> dict[str, float | str]:
    """An edit of the shipped example measured against its source and reference (regions from the scene code)."""
    from demo import REFERENCE, SOURCE
    src, ref = Image.open(EXAMPLE / "source.png"), Image.open(EXAMPLE / "reference.png")
    (inside, outside), ref_in = source_regions(src.width), erode(np.asarray(draw(REFERENCE, ref.width)[1]) > 127, 3)
    h_edit, h_ref = colour_hist(res.edit, inside), colour_hist(ref, ref_in)
    return {"background_psnr": psnr(res.edit, src, outside), "reconstruction_psnr": psnr(res.reconstruction, src),
            "hist_to_reference": hist_distance(h_edit, h_ref),
            "hist_to_source": hist_distance(h_edit, colour_hist(src, inside)),
            "texture_edit": texture_energy(res.edit, inside), "texture_reference": texture_energy(ref, ref_in),
            "pattern_edit": pattern_fraction(res.edit, inside), "pattern_reference": pattern_fraction(ref, ref_in),
            "pattern_source": pattern_fraction(src, inside),
            **{f"like_{k}": v for k, v in texture_scores(res.edit, inside, SOURCE).items()},
            "colour_edit": object_colour(res.edit, inside)}


def region_texture(pattern: float, scores: dict[str, float]) -> str:
    """The texture a region shows: "plain" if under 5 % of it is in a pattern's dark colour (pattern_fraction; a
    drawn dotted circle: 0.23), else the drawn texture it correlates with best (texture_scores)."""
    return "plain" if pattern < 0.05 else max(scores, key=scores.__getitem__)


def texture_kind(m: dict[str, float | str]) -> str:
    """The texture an edit's region shows (edit_metrics; region_texture)."""
    return region_texture(float(m["pattern_edit"]), {t: float(m[f"like_{t}"]) for t in TEXTURES[1:]})


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


# Two objects side by side: does the first object's word find it, and not the other one?
MASK_T_PAIRS = [Scene("circle", "red", "plain", "gray", 0.28, 0.5, 0.17,
                      Scene("square", "blue", "plain", "gray", 0.72, 0.5, 0.17)),
                Scene("star", "yellow", "plain", "blue", 0.5, 0.72, 0.17,
                      Scene("triangle", "white", "plain", "blue", 0.5, 0.28, 0.17))]


class CrossAttentionMaps(AttentionHook):
    """Records the last (conditional) element's cross-attention probabilities in the given blocks (one map size),
    averaged over heads: a list of [H*W, 77]."""

    def __init__(self, blocks: tuple[int, ...]):
        self.blocks, self.maps, self.hw = blocks, [], (0, 0)

    def needs_probs(self, site: AttnSite, step: int | None) -> bool:
        return site.kind == "cross" and site.block in self.blocks

    def edit_probs(self, site: AttnSite, step: int | None, probs: torch.Tensor) -> torch.Tensor:
        self.maps.append(probs[-1].float().mean(0))
        self.hw = (site.height, site.width)
        return probs


@torch.no_grad()
def regenerate_hooked(sd: StableDiffusion, scene: Scene, hook: AttentionHook, steps: int = 50) -> None:
    """DDIM-invert `scene` with its caption, then regenerate it (guidance 1) with `hook` on every layer."""
    src, _ = draw(scene, sd.native_size)
    caption, z0 = scene.caption(), sampling.encode(sd, to_tensor(src, src.size))
    zs = sampling.invert(sd, z0, [caption], steps=steps, progress=False)
    with sd.unet.hooked(hook):
        sampling.sample(sd, caption, guidance=1.0, latents=zs[-1], steps=steps, progress=False)


def word_attention(sd: StableDiffusion, scene: Scene, blocks: tuple[int, ...] = BLEND_BLOCKS,
                   steps: int = 50) -> dict[str, float]:
    """Where the cross-attention of `blocks` goes while the model regenerates an inverted scene (guidance 1):
    the share on padding (the <|endoftext|> tokens after the caption, which see all of it), and the first
    object's shape word's attention on the object over that elsewhere, cells weighted by how much of them the
    object covers (> 1: the word finds its object)."""
    rec, caption, obj = CrossAttentionMaps(blocks), scene.caption(), draw(scene, sd.native_size)[1]
    regenerate_hooked(sd, scene, rec, steps)
    m = torch.stack(rec.maps).mean(0)  # [h*w, 77]
    last = len(sd.tokenizer.encode(caption).spans) + 1  # <|endoftext|>
    word = m[:, word_token_indices(sd.tokenizer, caption, scene.shape)].sum(1).numpy()
    cover = np.asarray(obj.resize(rec.hw[::-1], Image.Resampling.BOX), np.float64).reshape(-1) / 255  # per cell
    on, off = (word * cover).sum() / cover.sum(), (word * (1 - cover)).sum() / (1 - cover).sum()
    return {"padding_share": float(m[:, last + 1:].sum(1).mean()), "word_contrast": float(on / max(off, 1e-12))}


class SelfAttentionEntropy(AttentionHook):
    """Normalised entropy (1 = uniform) of the last (conditional) element's self-attention in `blocks`,
    averaged over heads and queries; one value per call."""

    def __init__(self, blocks: tuple[int, ...]):
        self.blocks, self.values = blocks, []

    def needs_probs(self, site: AttnSite, step: int | None) -> bool:
        return site.kind == "self" and site.block in self.blocks

    def edit_probs(self, site: AttnSite, step: int | None, probs: torch.Tensor) -> torch.Tensor:
        p = probs[-1].float()
        self.values.append(float(-(p * p.clamp_min(1e-12).log()).sum(-1).mean() / np.log(p.shape[-1])))
        return probs


def self_attention_entropy(sd: StableDiffusion, scene: Scene, blocks: tuple[int, ...], steps: int = 50) -> float:
    """How spread the model's self-attention in `blocks` is while it regenerates an inverted scene (guidance 1):
    normalised entropy, 1 = every query attends to all pixels alike. SR-attn copies appearance through these
    layers, by where a target pixel's query finds its keys."""
    rec = SelfAttentionEntropy(blocks)
    regenerate_hooked(sd, scene, rec, steps)
    return float(np.mean(rec.values))


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


def tile_grid(images: list[Image.Image], cols: int) -> Image.Image:
    """Equal-size images in rows of `cols`, left to right, top to bottom, on white (for the model card's figures)."""
    w, h = images[0].size
    grid = Image.new("RGB", (w * cols, h * -(-len(images) // cols)), "white")
    for i, im in enumerate(images):
        grid.paste(im.convert("RGB"), (i % cols * w, i // cols * h))
    return grid


def main() -> int:
    """Print every measurement as markdown tables."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None)
    p.add_argument("--samples", type=int, default=2, help="seeds per text-to-image prompt")
    p.add_argument("--grid", default=None, help="also save the text-to-image samples as one PNG (a row per prompt)")
    p.add_argument("--edits", default=None, help="also save as one PNG: source, reference, SpecRef edit, P2P baseline, "
                   "the edit without mask_t, the last two with SPEC's map blocks, the prompt-only colour edit; "
                   "then each reference of the controls table and its edit, a row per colour")
    args = p.parse_args()
    sd = weights.load_model(args.model)
    images: list[Image.Image] = []
    acc = text_to_image(sd, EVAL_SCENES, seeds=args.samples, images=images)
    if args.grid:
        tile_grid(images, args.samples).save(args.grid)
    print("| text-to-image (30 steps, w=5) | " + " | ".join(acc) + " |\n|---|" + "---|" * len(acc))
    print(f"| fraction right ({len(EVAL_SCENES)} prompts x {args.samples} seeds) | "
          + " | ".join(f"{v:.2f}" for v in acc.values()) + " |\n")
    print("| scene | reconstruction PSNR (50 steps) | VAE alone |\n|---|---|---|")
    for scene in EVAL_SCENES[:4]:
        r, v = reconstruction_psnr(sd, scene)
        print(f"| {scene.caption()} | {r:.2f} dB | {v:.2f} dB |")
    runs = {"SpecRef (both masks)": {}, "P2P baseline (no reference)": {"use_reference": False},
            "only mask_s (no mask_t)": {"masks": "s"}, "only mask_t": {"masks": "t"}, "no masks": {"masks": "none"},
            "SpecRef, SPEC's map blocks": {"map_blocks": BLEND_BLOCKS},
            "only mask_s, SPEC's map blocks": {"map_blocks": BLEND_BLOCKS, "masks": "s"}}
    results = {name: run_example(sd, example_config(**ch)) for name, ch in runs.items()}
    rows = {name: edit_metrics(r) for name, r in results.items()}
    keys = list(next(iter(rows.values())))
    print("\n| edit | " + " | ".join(keys) + " | texture |\n|---|" + "---|" * (len(keys) + 1))
    for name, m in rows.items():
        print(f"| {name} | " + " | ".join(v if isinstance(v := m[k], str) else f"{v:.3f}" for k in keys)
              + f" | {texture_kind(m)} |")
    from demo import REFERENCE
    controls = {REFERENCE: results["SpecRef (both masks)"]}
    controls.update({ref: run_example(sd, example_config(), ref) for ref in REFERENCE_CONTROLS + COLOUR_CONTROLS})
    print("\n| reference (SpecRef edit) | pattern | like striped / dotted / checkered | texture | colour "
          "| background PSNR |\n|---|---|---|---|---|---|")
    for ref, res in controls.items():
        m = edit_metrics(res)
        print(f"| {ref.caption(background=False)} | {m['pattern_edit']:.2f} | "
              + " / ".join(f"{m[f'like_{t}']:.2f}" for t in TEXTURES[1:])
              + f" | {texture_kind(m)} | {m['colour_edit']} | {m['background_psnr']:.1f} dB |")
    for blocks in ((10, 11, 12), (13, 14, 15)):
        h = [self_attention_entropy(sd, scene, blocks) for scene in MASK_T_SCENES]
        print(f"self-attention entropy (1 = uniform), blocks {blocks}: " + " / ".join(f"{v:.2f}" for v in h))
    scenes = MASK_T_SCENES + MASK_T_PAIRS
    print("\n| map blocks | mask_t IoU with the object: " + ", ".join(sc.shape for sc in MASK_T_SCENES)
          + "; first of two: " + ", ".join(sc.shape for sc in MASK_T_PAIRS) + " | shape word on the object / elsewhere"
          " | attention on padding |\n|---|---|---|---|")
    for blocks in (BLEND_BLOCKS, (10, 11, 12), TOY_MAP_BLOCKS):
        ious = [mask_t_iou(sd, scene, example_config(map_blocks=blocks)) for scene in scenes]
        wa = [word_attention(sd, scene, blocks) for scene in scenes]
        print(f"| {','.join(map(str, blocks))} | " + " / ".join(f"{v:.2f}" for v in ious) + " | "
              + " / ".join(f"{w['word_contrast']:.2f}" for w in wa) + " | "
              + " / ".join(f"{w['padding_share']:.2f}" for w in wa) + " |")
    colour_res = run_example(sd, example_config(flags=COLOUR_EDIT, use_reference=False))
    colour = colour_edit_metrics(colour_res)
    if args.edits:
        strip = [Image.open(EXAMPLE / "source.png"), Image.open(EXAMPLE / "reference.png"),
                 *(results[k].edit for k in ("SpecRef (both masks)", "P2P baseline (no reference)",
                                             "only mask_s (no mask_t)", "SpecRef, SPEC's map blocks",
                                             "only mask_s, SPEC's map blocks")), colour_res.edit]
        row_colour = REFERENCE.colour
        for ref, res in controls.items():  # a row per reference colour
            if ref.colour != row_colour:
                strip += [Image.new("RGB", strip[0].size, (255, 255, 255))] * (-len(strip) % 8)
            row_colour = ref.colour
            strip += [draw(ref, sd.native_size)[0], res.edit]
        tile_grid(strip, 8).save(args.edits)
    print("\nP2P 'a red circle' -> 'a blue circle' (no reference): "
          + ", ".join(f"{k} {v if isinstance(v, str) else round(v, 3)}" for k, v in colour.items()))
    half = run_example(weights.load_model(args.model, dtype=torch.bfloat16), example_config())
    ag = agreement(results["SpecRef (both masks)"], half)
    print(f"\nbfloat16 vs float32 SpecRef edit: PSNR {ag['psnr']:.2f} dB ({ag['psnr_outside']:.2f} dB outside the "
          f"region), mask_t agreement {ag['mask_t']:.4f}; pattern {edit_metrics(half)['pattern_edit']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
