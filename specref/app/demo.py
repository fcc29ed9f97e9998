"""`python -m specref demo`: a SpecRef edit with the embedded demo model on the shipped example -> OUT/summary.png.

The inputs are the shipped synthetic example (assets/examples/toy-checker, installed with the package, drawn by
scripts/toy/scenes.py): "a red circle" becomes "a circle" that takes the reference's (a yellow checkered star's)
colour and checker, which no prompt names; `--baseline` also runs the Prompt-to-Prompt baseline (no reference),
which can only follow the words. The edit is the example's own flags (its edit.json); the level at which the
model's words are read and how its maps become mask_t come from the model (its specref.json, §8.4), so other SD
weights run it at the editor's defaults.
`--model` runs the same edit on other SD weights (diffusers folder, single file or Hub repo id); the images are
then resized to that model's native size.
"""
from __future__ import annotations

import argparse
import json

from weights import ASSETS, precision

from ..settings import canonical, parse_value
from .jobs import EditJob, make_job

EXAMPLE = ASSETS / "examples" / "toy-checker"
# The example's edit as `python -m specref edit` flags (its edit.json, written by scripts/toy/examples.py); the SR
# steps are the example's 10-50, scaled to --steps.
EDIT = json.loads((EXAMPLE / "edit.json").read_text())["flags"]


def add_arguments(p: argparse.ArgumentParser, default_out: str = "out/demo") -> None:
    """The demo's flags (scripts/demo.py adds --write-example)."""
    p.add_argument("--model", default=None, help="SD weights (default: the embedded demo model, assets/toy-sd)")
    p.add_argument("--out", default=default_out, help=f"output folder; the demo replaces its own previous output "
                   f"there [{default_out}]")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps [50]")
    p.add_argument("--baseline", action="store_true", help="also run the P2P baseline into OUT-baseline")
    p.add_argument("--dtype", default=None, choices=list(precision.NAMES),
                   help="as `python -m specref edit --dtype` (default: float32 on CPU, float16 on CUDA)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--inspect", metavar="DIR", help="also draw what the edit computed (as `edit --inspect`)")
    p.add_argument("--trace", metavar="FILE", help="also write the per-step numbers (as `edit --trace`)")


def edit_argvs(args: argparse.Namespace) -> list[list[str]]:
    """The `python -m specref edit` command lines of the demo: the example (and the P2P baseline with --baseline)."""
    if not 2 <= args.steps <= 999:
        raise ValueError(f"demo --steps must be 2 to 999, got {args.steps}")
    files = ["--source", str(EXAMPLE / "source.png"), "--reference", str(EXAMPLE / "reference.png"),
             "--reference-mask", str(EXAMPLE / "reference_mask.png")]
    sr = ["--sr-steps", f"{max(1, round(10 * args.steps / 50))}-{args.steps}"]  # the example's 10-50, scaled
    model = ["--model", args.model] if args.model else []
    extra = (["--dtype", args.dtype] if args.dtype else []) + (["--quiet"] if args.quiet else [])
    # the demo replaces its own previous output (only a folder that holds just what a specref run wrote)
    common = ["edit", *files, *EDIT, "--steps", str(args.steps), *sr, *model, *extra, "--overwrite"]
    seeing = [*(["--inspect", args.inspect] if args.inspect else []), *(["--trace", args.trace] if args.trace else [])]
    argvs = [[*common, "--out", args.out, *seeing]]
    if args.baseline:
        argvs.append([*common, "--no-reference", "--out", args.out + "-baseline"])
    return argvs



def example_job(steps: int = 50, **settings: object) -> EditJob:
    """The shipped example's edit as an EditJob (its flags, SR steps scaled as the demo scales them) with `settings`
    on top: what scripts and recipes run on the demo model."""
    flags = EDIT + ["--sr-steps", f"{max(1, round(10 * steps / 50))}-{steps}", "--steps", str(steps)]
    given = {canonical(f): parse_value(f, v) for f, v in zip(flags[::2], flags[1::2])} | settings
    inputs = {"source": str(EXAMPLE / "source.png"), "reference": str(EXAMPLE / "reference.png"),
              "reference_mask": str(EXAMPLE / "reference_mask.png")}
    return make_job(given, inputs)
