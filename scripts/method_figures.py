#!/usr/bin/env python
"""Regenerate docs/method/: the `--inspect` pictures of the demo edit that docs/method.md shows.

    python scripts/method_figures.py [--out docs/method] [--steps 50]

Runs the shipped demo edit (scripts/demo.py's flags) with `--inspect`, its P2P baseline, and the two mask
ablations (without mask_t, without mask_s), and keeps their summaries and pictures, as palette PNGs so the
folder stays a few hundred KB. About 5 minutes on 2 CPU cores.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]

from PIL import Image  # noqa: E402

from specref.app.cli import main as cli_main  # noqa: E402
from specref.app.demo import EDIT, EXAMPLE  # noqa: E402

# run name -> (extra edit flags, {file in the run's folders: name in docs/method})
RUNS = {
    "specref": ([], {"summary.png": "summary.png", "inspect/cross_attention_source.png": "cross_attention_source.png",
                     "inspect/cross_attention_target.png": "cross_attention_target.png",
                     "inspect/masks_over_steps.png": "masks_over_steps.png",
                     "inspect/sr_attention.png": "sr_attention.png", "inspect/trajectory.png": "trajectory.png"}),
    "baseline": (["--no-reference"], {"summary.png": "baseline_summary.png"}),
    "no_mask_t": (["--masks", "s"], {"summary.png": "no_mask_t_summary.png"}),
    "no_mask_s": (["--masks", "t"], {"summary.png": "no_mask_s_summary.png",
                                     "inspect/sr_attention.png": "no_mask_s_sr_attention.png"}),
}


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
    files = ["--source", str(EXAMPLE / "source.png"), "--reference", str(EXAMPLE / "reference.png"),
             "--reference-mask", str(EXAMPLE / "reference_mask.png")]
    sr = f"{round(10 * args.steps / 50)}-{args.steps}"
    with tempfile.TemporaryDirectory() as tmp:
        for name, (extra, keep) in RUNS.items():
            run = Path(tmp) / name
            rc = cli_main(["edit", *files, *EDIT, "--steps", str(args.steps), "--sr-steps", sr, *extra, "--quiet",
                           "--out", str(run), "--inspect", str(run / "inspect")])
            if rc:
                return rc
            for src, dst in keep.items():
                save_small(run / src, out / dst)
    total = sum(f.stat().st_size for f in out.iterdir())
    print(f"wrote {len(list(out.iterdir()))} figures to {out} ({total / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
