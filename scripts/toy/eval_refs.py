"""References as users have them, on the demo model: a reference on a busy background with no mask (all-ones
mask_s, `auto`, the drawn mask), and the auto mask's IoU with the drawn one over the busy example's controls.

    python scripts/toy/eval_refs.py [--steps 50] [--only busy,auto] [--out out/eval_refs.json]

(One reference per target word is the example toy-two-references: scripts/toy/evaluate.py --only examples.)
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]

import specref  # noqa: E402
import weights  # noqa: E402
from toy import evaluate as ev  # noqa: E402
from toy import examples as ex  # noqa: E402
from toy.scenes import COLOURS, draw_objects  # noqa: E402


def background_fraction(img, where: np.ndarray, avoid: str) -> float:
    """Fraction of the pixels where `where` is True nearer to one of the busy background's two colours than to any
    other named colour (the background leaking into the edited object)."""
    busy = [c for c in ex.BUSY_COLOURS if c != avoid][:2]
    pix = ev.arr(img)[where]
    return float(np.mean([ev.nearest(p, COLOURS) in busy for p in pix]))


def busy_masks(sd, steps: int) -> dict:
    """The busy example's reference with mask_s all ones, auto (the shipped example) and drawn."""
    example = ex.BUSY
    ref = example.refs[0]
    inside, _ = ev.regions(example, sd.native_size)
    out = {}
    for name, mask in (("all_ones", "ones"), ("auto", "auto"), ("drawn", "drawn")):
        img, drawn = ref.image(sd.native_size)
        m = {"ones": np.ones_like(drawn), "auto": "auto", "drawn": drawn}[mask]
        r = specref.Reference(img, mask=m, prompt=ref.prompt() if mask == "auto" else None,
                              auto_mask_words=(ref.scene.shape,) if mask == "auto" else None)
        cfg = example.config(steps, sd.source)
        res = specref.edit(sd, draw_objects(example.source, sd.native_size)[0], [r], cfg, progress=False)
        metrics = ev.edit_metrics(example, res)
        out[name] = {"busy_colours_inside": background_fraction(res.edit, inside[0], ref.scene.colour),
                     **metrics["objects"][0], "psnr_outside": metrics["psnr_outside"],
                     "mask_iou": ev.iou(np.asarray(res.mask_s), drawn)}
        print(name, out[name], flush=True)
    return out


def auto_controls(sd, steps: int) -> list[dict]:
    """The busy example's 24 controls (auto masks): the auto mask's IoU with the drawn one and its share of the
    reference image, with the edit's outcome."""
    rows = []
    for refs in ex.controls(ex.BUSY):
        t0 = time.time()
        res = ev.run(sd, ex.BUSY, refs, steps)
        drawn = refs[0].image(sd.native_size)[1]
        m = ev.edit_metrics(ex.BUSY, res, refs)
        rows.append({"reference": refs[0].scene.caption(background=False), "iou": ev.iou(np.asarray(res.mask_s), drawn),
                     "fraction": float(np.asarray(res.mask_s).mean()), **m["objects"][0],
                     "psnr_outside": m["psnr_outside"], "seconds": time.time() - t0})
        print(rows[-1], flush=True)
    return rows


def main() -> int:
    """Run the measurements; write them as JSON."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", default=None)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--only", default="busy,auto")
    p.add_argument("--out", default=str(ROOT / "out" / "eval_refs.json"))
    a = p.parse_args()
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    sd = weights.load_model(a.model)
    results = {}
    for name, fn in (("busy", busy_masks), ("auto", auto_controls)):
        if name in a.only.split(","):
            results[name] = fn(sd, a.steps)
            Path(a.out).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
