"""The main job on a fresh machine: a SpecRef edit with the embedded demo model, writing out/demo/summary.png.

The demo itself is `python -m specref demo` (specref/app/demo.py, which also runs from an installed wheel); this
script keeps the repository's entry point (output under the repo's out/demo) and redraws the shipped examples'
inputs with the scene code (`--write-example`: scripts/toy/examples.py's SHIPPED folders, with their edit.json).
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]

from specref.app.cli import main as cli_main  # noqa: E402
from toy import examples  # noqa: E402


def write_example(folder: Path | None = None) -> list[Path]:
    """Draw every shipped example's inputs with the scene code and write its edit.json (into `folder`/NAME if
    given, else assets/examples/NAME)."""
    return [examples.write(e, None if folder is None else Path(folder) / e.name) for e in examples.SHIPPED]


def main(argv: list[str] | None = None) -> int:
    """Run the demo edit (`python -m specref demo`, OUT under the repo), or redraw the example inputs
    (--write-example)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv == ["--write-example"]:
        print("wrote " + ", ".join(map(str, write_example())))
        return 0
    if not any(a == "--out" or a.startswith("--out=") for a in argv):
        argv += ["--out", str(ROOT / "out" / "demo")]
    return cli_main(["demo", *argv])


if __name__ == "__main__":
    sys.exit(main())
