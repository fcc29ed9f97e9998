"""What the recipes share: the demo model, the shipped example's edit, and a side-by-side picture."""
from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import specref  # noqa: E402
import weights  # noqa: E402
from specref.app.demo import example_job  # noqa: E402
from specref.app.pictures import labelled_grid  # noqa: E402


def run_example(steps: int, hook=None, sd=None, **settings) -> specref.EditResult:
    """The shipped example's edit on the demo model (or `sd`), with an attention hook of the recipe's beside
    SpecRef's."""
    job = example_job(steps, **settings)
    sd = sd or weights.load_model()
    return specref.edit(sd, job.source, list(job.references) or None, job.config, progress=False, hook=hook)


def side_by_side(images: list[Image.Image], labels: list[str], height: int = 192) -> Image.Image:
    """Images in a row, each with its label under it (the --inspect pictures' grid)."""
    tiles = [im.convert("RGB").resize((round(im.width * height / im.height), height)) for im in images]
    return labelled_grid([tiles], [labels])
