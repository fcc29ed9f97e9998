"""Issue 19 on the demo model: auto mask_s (IoU with the drawn mask; the controls' colour and pattern), a reference
on a busy background without a mask, and one reference per target word on a two-object scene.

    python scripts/eval_refs.py [--steps 50] [--only auto,busy,two] [--out out/eval_refs.json]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]

import specref  # noqa: E402
import weights  # noqa: E402
from specref import Reference  # noqa: E402
from specref.images import psnr  # noqa: E402
from specref.pipeline import edit_stage, invert, prepare  # noqa: E402
from specref.references import auto_mask_s  # noqa: E402
import eval_toy  # noqa: E402
from demo import REFERENCE  # noqa: E402
from toy_scenes import COLOURS, Scene, draw  # noqa: E402

THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7)
# Two objects side by side (eval_toy.MASK_T_PAIRS[0]); each word gets its own reference.
TWO = eval_toy.MASK_T_PAIRS[0]
TWO_REFS = {"circle": Scene("star", "yellow", "checkered", "black"), "square": Scene("star", "purple", "striped", "black")}


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two bool masks."""
    return float((a & b).sum() / max((a | b).sum(), 1))


def auto_edit(sd, cfg, ref_img, thres: float = 0.5, mask=specref.references.AUTO, prompt: str | None = None):
    """The shipped example's edit with `ref_img` and an auto mask (or `mask`); returns (result, reference maps, tokens)."""
    cfg = cfg.replace(reference_thres=thres)
    cfg, prep = prepare(sd, eval_toy.EXAMPLE / "source.png", Reference(ref_img, mask=mask, prompt=prompt), cfg)
    inv = invert(sd, prep, cfg, range(*cfg.sr_layers), range(*cfg.sr_steps), progress=False)
    return edit_stage(sd, prep, inv, cfg, progress=False), inv.reference_maps, prep.mask_tokens


def controls(sd, steps: int) -> list[dict]:
    """Auto mask_s on the demo reference and the 12 control stars: IoU with the drawn mask per threshold, and the
    edit with the default threshold measured as eval_toy measures the drawn-mask edit."""
    rows = []
    for ref in [REFERENCE, *eval_toy.REFERENCE_CONTROLS, *eval_toy.COLOUR_CONTROLS]:
        t0 = time.time()
        img, drawn = draw(ref, sd.native_size)
        cfg = eval_toy.example_config(steps, reference_prompt=ref.caption(), reference_words=(ref.shape,))
        res, maps, tokens = auto_edit(sd, cfg, img)
        drawn = np.asarray(drawn) > 127
        ious = {t: iou(auto_mask_s(maps[0], tokens[0], drawn.shape, cfg.interp, t), drawn) for t in THRESHOLDS}
        m = eval_toy.edit_metrics(res)
        rows.append({"reference": ref.caption(), "iou": ious, "colour": m["colour_edit"],
                     "texture": eval_toy.texture_kind(m), "background_psnr": m["background_psnr"],
                     "mask_fraction": float(res.mask_s.mean()), "seconds": time.time() - t0})
        print(rows[-1], flush=True)
    return rows


def busy_reference(size: int, seed: int = 0) -> tuple[Image.Image, np.ndarray]:
    """The demo reference star on a busy background: random 8-px blocks of green and blue (no plain colour)."""
    img, mask = draw(REFERENCE, size)
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 2, (size // 8, size // 8)).repeat(8, 0).repeat(8, 1)
    bg = np.where(blocks[..., None] == 1, np.array(COLOURS["green"]), np.array(COLOURS["blue"])).astype(np.uint8)
    m = np.asarray(mask) > 127
    return Image.fromarray(np.where(m[..., None], np.asarray(img), bg)), m


def background_fraction(img: Image.Image, where: np.ndarray) -> float:
    """Fraction of the pixels where `where` is True in the busy background's hues: green or blue well above red
    (max(G, B) > R + 40). The reference's yellow and dark yellow, the gray background and the red source are not."""
    pix = eval_toy.arr(img)[where].astype(np.float64)
    return float((np.maximum(pix[:, 1], pix[:, 2]) > pix[:, 0] + 40).mean())


def busy(sd, steps: int) -> dict:
    """No mask (all ones) vs auto vs the drawn mask, with the busy-background reference."""
    img, drawn = busy_reference(sd.native_size)
    img.save(ROOT / "out" / "eval_refs_busy_reference.png")
    inside, _ = eval_toy.source_regions(sd.native_size)
    cfg = eval_toy.example_config(steps, reference_prompt="a yellow checkered star", reference_words=("star",))
    out = {}
    for name, mask in (("all_ones", np.ones_like(drawn)), ("auto", specref.references.AUTO), ("drawn", drawn)):
        res, _, _ = auto_edit(sd, cfg if name == "auto" else cfg.replace(reference_prompt=""), img, mask=mask)
        m = eval_toy.edit_metrics(res)
        res.edit.save(ROOT / "out" / f"eval_refs_busy_{name}.png")
        out[name] = {"background_colour_inside": background_fraction(res.edit, inside), "colour": m["colour_edit"],
                     "texture": eval_toy.texture_kind(m), "background_psnr": m["background_psnr"],
                     "mask_iou": iou(res.mask_s, drawn)}
        print(name, out[name], flush=True)
    return out


def two_words(sd, steps: int) -> dict:
    """A red circle and a blue square -> 'a circle and a square', each word with its own reference star."""
    size = sd.native_size
    src, _ = draw(TWO, size)
    objs = {"circle": np.asarray(draw(TWO.with_(other=None), size)[1]) > 127,
            "square": np.asarray(draw(TWO.other.with_(background=TWO.background), size)[1]) > 127}
    cfg = eval_toy.example_config(steps).replace(
        source_prompt=TWO.caption(), target_prompt=TWO.caption(colour=False), mode="refine",
        blend_words=(("red", "circle", "blue", "square"), ("circle", "square")), target_words=())
    refs = []
    for word, scene in TWO_REFS.items():
        img, mask = draw(scene, size)
        refs.append(Reference(img, mask=mask, words=word))
    res = specref.edit(sd, src, refs, cfg, progress=False)
    out = {"psnr_outside_both": psnr(res.edit, src, ~(eval_toy.dilate(objs["circle"], 8) | eval_toy.dilate(objs["square"], 8)))}
    for (word, scene), (_, m_t) in zip(TWO_REFS.items(), res.masks_t.items()):
        inner = eval_toy.erode(objs[word], 3)
        obj_scene = TWO if word == "circle" else TWO.other
        mt = m_t.cpu().numpy()
        obj_lat = np.asarray(Image.fromarray(objs[word]).resize(mt.shape[::-1], Image.Resampling.BOX)) > 0
        out[word] = {"reference": scene.caption(), "colour": eval_toy.object_colour(res.edit, inner),
                     "texture": eval_toy.region_texture(eval_toy.pattern_fraction(res.edit, inner),
                                                        eval_toy.texture_scores(res.edit, inner, obj_scene)),
                     "mask_t_iou": iou(mt, obj_lat)}
    res.edit.save(ROOT / "out" / "eval_refs_two_words.png")
    print(out, flush=True)
    return out


def main() -> int:
    """Run the measurements; write them as JSON."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--only", default="auto,busy,two")
    p.add_argument("--out", default=str(ROOT / "out" / "eval_refs.json"))
    a = p.parse_args()
    (ROOT / "out").mkdir(exist_ok=True)
    sd = weights.load_model()
    results = {}
    for name, fn in (("two", two_words), ("busy", busy), ("auto", controls)):
        if name in a.only.split(","):
            results[name] = fn(sd, a.steps)
            Path(a.out).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
