"""Run the eight §6 presets on an examples folder and write a contact sheet.

    python scripts/run_presets.py --model SRC --examples ../shared/examples --out out/presets [--steps 50]

Each example folder holds source.*, reference.* and optionally reference_mask.* or reference_cutout.png
(a cutout is used as the reference itself; with neither, the reference's non-black pixels are the mask).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from specref.app.cli import main as cli_main  # noqa: E402
from specref.presets import PRESETS  # noqa: E402


def find(folder: Path, stem: str) -> Path | None:
    """The first file named stem.* in folder."""
    return next(iter(sorted(folder.glob(f"{stem}.*"))), None)


def main() -> int:
    """Run every preset whose example folder exists; then paste the summaries into one sheet."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", default=None)
    p.add_argument("--examples", default=str(ROOT.parent / "shared" / "examples"))
    p.add_argument("--out", default=str(ROOT / "out" / "presets"))
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--dtype", default="float32")
    args, extra = p.parse_known_args()
    out = Path(args.out)
    rows, failed = [], []
    for name in PRESETS:
        ex = Path(args.examples) / name
        if not ex.is_dir():
            print(f"skip {name}: no {ex}")
            continue
        source, reference = find(ex, "source"), find(ex, "reference_cutout") or find(ex, "reference")
        cmd = ["edit", "--preset", name, "--source", str(source), "--reference", str(reference),
               "--steps", str(args.steps), "--dtype", args.dtype, "--out", str(out / name)] + extra
        if args.model:
            cmd += ["--model", args.model]
        mask = find(ex, "reference_mask")
        if mask is not None:
            cmd += ["--reference-mask", str(mask)]
        print("python -m specref " + " ".join(cmd))
        if cli_main(cmd) != 0:
            failed.append(name)
            continue
        rows.append((name, Image.open(out / name / "summary.png")))
    if rows:
        width = max(im.width for _, im in rows)
        sheet = Image.new("RGB", (width, sum(im.height + 16 for _, im in rows)), "white")
        y, draw = 0, ImageDraw.Draw(sheet)
        for name, im in rows:
            draw.text((4, y + 2), name, fill="black")
            sheet.paste(im, (0, y + 16))
            y += im.height + 16
        sheet.save(out / "contact_sheet.png")
        print(f"wrote {out / 'contact_sheet.png'}")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
