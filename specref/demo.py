"""`python -m specref demo`: a SpecRef edit with the embedded demo model on the shipped example -> OUT/summary.png.

The inputs are the shipped synthetic example (assets/examples/toy-checker, installed with the package: source,
reference and mask drawn by scripts/toy_scenes.py): "a red circle" becomes "a circle" that takes the reference's
(a yellow checkered star's) colour and checker, which no prompt names; `--baseline` also runs the Prompt-to-Prompt
baseline (no reference), which can only follow the words and draws the model's plain yellow circle.
mask_t and Local Blend read this model's word level, up block 3's 16x16 maps (`--map-blocks 13,14,15`, with
`--thres 0.7 --interp nearest`; SPEC's 4x4 level misses the object; assets/toy-sd/README.md).
`--model` runs the same edit on other SD v1 weights (diffusers folder, .safetensors/.ckpt, or a Hub repo id)
with SPEC's map blocks and the editor's default thres and interp; images are then resized to that model's
native size.
"""
from __future__ import annotations

import argparse

from weights import ASSETS, precision

from .cli import main as cli_main
from .config import BLEND_BLOCKS, EditConfig

EXAMPLE = ASSETS / "examples" / "toy-checker"
# Where mask_t and Local Blend read the demo model's words: the 16x16 cross-attention of up block 3, not SPEC §4.3's
# latent/4 level (4x4 maps at 128², where a word's attention is spread over the image; assets/toy-sd/README.md).
TOY_MAP_BLOCKS = (13, 14, 15)
# The edit, as `python -m specref edit` flags (also written to the example folder as edit.json).
EDIT = ["--source-prompt", "a red circle on a gray background", "--target-prompt", "a circle on a gray background",
        "--mode", "refine", "--target-words", "circle", "--blend-words", "red,circle;circle",
        "--self-replace-steps", "0.4", "--thres", "0.7", "--interp", "nearest", "--sr-layers", "10-16",
        "--map-blocks", ",".join(map(str, TOY_MAP_BLOCKS))]  # + --sr-steps 10-50, scaled to --steps
# Other models get the editor's defaults for what EDIT tunes to the demo model: SPEC's map blocks (§4.3), the
# mask_t threshold and the mask resizing.
SPEC_MASKS = ["--map-blocks", ",".join(map(str, BLEND_BLOCKS)), "--thres", str(EditConfig.thres),
              "--interp", EditConfig.interp]


def parser(default_out: str = "out/demo", prog: str = "python -m specref demo") -> argparse.ArgumentParser:
    """The demo's flags (scripts/demo.py adds --write-example)."""
    p = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="SD v1 weights (default: the embedded demo model, assets/toy-sd)")
    p.add_argument("--out", default=default_out)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--baseline", action="store_true", help="also run the P2P baseline into OUT-baseline")
    p.add_argument("--dtype", default=None, choices=list(precision.NAMES),
                   help="as `python -m specref edit --dtype` (default: float32 on CPU, float16 on CUDA)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--inspect", metavar="DIR", help="also draw what the edit computed (as `edit --inspect`)")
    p.add_argument("--trace", metavar="FILE", help="also write the per-step numbers (as `edit --trace`)")
    return p


def run(args: argparse.Namespace) -> int:
    """Run `python -m specref edit` on the shipped example (and the P2P baseline with --baseline)."""
    files = ["--source", str(EXAMPLE / "source.png"), "--reference", str(EXAMPLE / "reference.png"),
             "--reference-mask", str(EXAMPLE / "reference_mask.png")]
    sr = f"{round(10 * args.steps / 50)}-{args.steps}"
    model = ["--model", args.model, *SPEC_MASKS] if args.model else []
    extra = (["--dtype", args.dtype] if args.dtype else []) + (["--quiet"] if args.quiet else [])
    # the demo replaces its own previous output (only a folder that holds just what a specref run wrote)
    common = ["edit", *files, *EDIT, "--steps", str(args.steps), "--sr-steps", sr, *model, *extra, "--overwrite"]
    seeing = [*(["--inspect", args.inspect] if args.inspect else []), *(["--trace", args.trace] if args.trace else [])]
    rc = cli_main([*common, "--out", args.out, *seeing])
    if rc == 0 and args.baseline:
        rc = cli_main([*common, "--no-reference", "--out", args.out + "-baseline"])
    return rc


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m specref demo`."""
    return run(parser().parse_args(argv))
