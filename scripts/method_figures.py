#!/usr/bin/env python
"""Regenerate docs/method/: the `--inspect` pictures of the demo edit that docs/method.md shows.

    python scripts/method_figures.py [--out docs/method] [--steps 50]

Runs the shipped demo edit (its edit.json) with `--inspect`, its P2P baseline and the two mask ablations (without
mask_t, without mask_s), and keeps their summaries and pictures, as palette PNGs so the folder stays a few hundred
KB. About 5 minutes on 2 CPU cores.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]

from PIL import Image  # noqa: E402

from specref.app.cli import main as cli_main  # noqa: E402
from weights import ASSETS  # noqa: E402

# run name -> (example folder, extra edit flags, {file in the run's folders: name in docs/method})
RUNS = {
    "specref": ("toy-checker", [], {
        "summary.png": "summary.png", "inspect/cross_attention_source.png": "cross_attention_source.png",
        "inspect/cross_attention_target.png": "cross_attention_target.png",
        "inspect/masks_over_steps.png": "masks_over_steps.png", "inspect/sr_attention.png": "sr_attention.png",
        "inspect/trajectory.png": "trajectory.png"}),
    "baseline": ("toy-checker", ["--no-reference"], {"summary.png": "baseline_summary.png"}),
    "no_mask_t": ("toy-checker", ["--masks", "s"], {"summary.png": "no_mask_t_summary.png"}),
    "no_mask_s": ("toy-checker", ["--masks", "t"], {"summary.png": "no_mask_s_summary.png",
                                                    "inspect/sr_attention.png": "no_mask_s_sr_attention.png"}),
}


def example_args(name: str) -> list[str]:
    """An example's `edit` inputs and flags, from its edit.json."""
    folder = ASSETS / "examples" / name
    spec = json.loads((folder / "edit.json").read_text())
    inputs = [v if v.startswith("--") or v == "auto" else str(folder / v) for v in spec["inputs"]]
    return inputs + spec["flags"]


def save_small(src: Path, dst: Path) -> None:
    """Copy a picture as a 256-colour palette PNG (the figures have few colours; the folder stays small)."""
    Image.open(src).convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT).save(dst, optimize=True)


def main(argv: list[str] | None = None) -> int:
    """Run the edits and write the figures."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(ROOT / "docs" / "method"))
    p.add_argument("--steps", type=int, default=50)
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sr = f"{round(10 * args.steps / 50)}-{args.steps}"  # the examples' SR steps, 10-50 scaled
    with tempfile.TemporaryDirectory() as tmp:
        for name, (example, extra, keep) in RUNS.items():
            run = Path(tmp) / name
            rc = cli_main(["edit", *example_args(example), "--steps", str(args.steps), "--sr-steps", sr, *extra,
                           "--quiet", "--out", str(run), "--inspect", str(run / "inspect")])
            if rc:
                return rc
            for src, dst in keep.items():
                save_small(run / src, out / dst)
    total = sum(f.stat().st_size for f in out.iterdir())
    print(f"wrote {len(list(out.iterdir()))} figures to {out} ({total / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
