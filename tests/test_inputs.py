"""Inputs a new user gets wrong: a tiny source image warns; an empty mask file's error names the file."""
from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
from PIL import Image

import specref
from specref import EditConfig
from specref.images import MIN_SIDE, warn_if_small

CFG = EditConfig(source_prompt="a cat sitting next to a mirror", target_prompt="a tiger sitting next to a mirror",
                 mode="replace", target_words=("tiger",), sr_steps=(1, 2), sr_layers=(10, 16), steps=2, size=64)


def test_small_images_warn_below_the_minimum_side(tmp_path):
    Image.new("RGB", (1, 1), "red").save(tmp_path / "dot.png")
    with pytest.warns(UserWarning, match=r"source .*dot\.png is only 1x1 px \(below the 64 px minimum side\)"):
        warn_if_small(Image.open(tmp_path / "dot.png"), "source")
    with pytest.warns(UserWarning, match=r"^reference is only 200x63 px"):
        warn_if_small(Image.new("RGB", (200, 63)), "reference")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_if_small(Image.new("RGB", (MIN_SIDE, 300)), "source")  # at the minimum: no warning


def test_editing_a_one_pixel_source_warns(tiny_sd, tmp_path):
    Image.new("RGB", (1, 1), "red").save(tmp_path / "dot.png")
    with pytest.warns(UserWarning, match=r"source .*dot\.png is only 1x1 px"):
        res = specref.edit(tiny_sd, tmp_path / "dot.png", None, CFG, progress=False)
    assert res.edit.size == (1, 1)  # it still runs: a warning, not an error


@pytest.mark.parametrize("as_pil", [False, True])
def test_empty_mask_error_names_the_file(tiny_sd, tmp_path, as_pil):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "src.png")
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(tmp_path / "empty_mask.png")
    mask = Image.open(tmp_path / "empty_mask.png") if as_pil else tmp_path / "empty_mask.png"
    with pytest.raises(ValueError, match=f"mask {re.escape(str(tmp_path / 'empty_mask.png'))} is empty"):
        specref.edit(tiny_sd, tmp_path / "src.png", tmp_path / "src.png", CFG, reference_mask_file=mask, progress=False)
    with pytest.raises(ValueError, match=r"mask \(an in-memory image\) is empty"):
        specref.masks.read_mask(Image.new("L", (8, 8)))
