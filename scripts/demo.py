"""The main job on a fresh machine: a SpecRef edit with the embedded demo model, writing out/demo/summary.png.

The demo itself is `python -m specref demo` (specref/app/demo.py, which also runs from an installed wheel); this
script keeps the repository's entry point (output under the repo's out/demo) and redraws the example's inputs
with the scene code (`--write-example`).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]

from specref.app.cli import main as cli_main  # noqa: E402
from specref.app.demo import EDIT, EXAMPLE  # noqa: E402
from toy_scenes import Scene, draw  # noqa: E402

SOURCE = Scene("circle", "red", "plain", "gray")
REFERENCE = Scene("star", "yellow", "checkered", "black")


def write_example(folder: Path = EXAMPLE) -> Path:
    """Draw the example's source, reference and reference mask with the scene code; write edit.json."""
    folder.mkdir(parents=True, exist_ok=True)
    source, _ = draw(SOURCE)
    reference, mask = draw(REFERENCE)
    for name, im in (("source.png", source), ("reference.png", reference), ("reference_mask.png", mask)):
        im.save(folder / name)
    (folder / "edit.json").write_text(json.dumps({"source": SOURCE.__dict__, "reference": REFERENCE.__dict__,
                                                  "flags": EDIT}, indent=1) + "\n")
    return folder


def main(argv: list[str] | None = None) -> int:
    """Run the demo edit (`python -m specref demo`, OUT under the repo), or redraw the example inputs
    (--write-example)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv == ["--write-example"]:
        print(f"wrote {write_example()}")
        return 0
    if not any(a == "--out" or a.startswith("--out=") for a in argv):
        argv += ["--out", str(ROOT / "out" / "demo")]
    return cli_main(["demo", *argv])


if __name__ == "__main__":
    sys.exit(main())
