"""Images as viewers show them: EXIF orientation, 16-bit, float, palette, greyscale with alpha, CMYK; refusals name
the mode. Masks are read the same way; an edit of a 16-bit source is the edit of its 8-bit version."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from specref.images import as_viewed, load_image, to_tensor
from specref.masks import read_mask

rng = np.random.default_rng(0)
GREY = rng.integers(0, 256, (40, 56), dtype=np.uint8)
RGB = rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)


def rgb(img: Image.Image) -> np.ndarray:
    return np.asarray(load_image(img).convert("RGB"))


def test_16_bit_greyscale_equals_its_8_bit_version(tmp_path):
    Image.fromarray(GREY.astype(np.uint16) * 257).save(tmp_path / "g16.png")
    im = Image.open(tmp_path / "g16.png")
    assert im.mode == "I;16"  # what Pillow gives: converted to RGB as is it would be all white
    assert np.array_equal(rgb(im)[..., 0], GREY)
    assert np.array_equal(np.asarray(load_image(tmp_path / "g16.png")), GREY)
    near = Image.fromarray(np.minimum(GREY.astype(np.int64) * 257 + 100, 65535).astype(np.uint16))  # rounds back
    assert np.array_equal(rgb(near)[..., 0], GREY)
    assert np.array_equal(rgb(Image.fromarray(GREY.astype(np.int32) * 257, "I"))[..., 0], GREY)


def test_float_greyscale():
    assert np.array_equal(rgb(Image.fromarray(GREY.astype(np.float32) / 255, "F"))[..., 0], GREY)
    assert np.array_equal(rgb(Image.fromarray(GREY.astype(np.float32), "F"))[..., 0], GREY)
    bad = GREY.astype(np.float32)
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        load_image(Image.fromarray(bad, "F"))


def test_exif_orientation_is_applied(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to show"
    Image.fromarray(RGB).save(tmp_path / "o.jpg", exif=exif, quality=100)
    plain = np.asarray(Image.open(tmp_path / "o.jpg").convert("RGB"))
    shown = np.asarray(load_image(tmp_path / "o.jpg").convert("RGB"))
    assert shown.shape == (56, 40, 3) and np.array_equal(shown, np.rot90(plain, -1))
    t = to_tensor(load_image(tmp_path / "o.jpg"), (64, 128))
    assert t.shape == (1, 3, 128, 64)


def test_palette_alpha_and_cmyk():
    rgb_img = Image.fromarray(RGB)
    assert np.array_equal(rgb(rgb_img.convert("P")), np.asarray(rgb_img.convert("P").convert("RGB")))
    la = Image.merge("LA", [Image.fromarray(GREY), Image.fromarray(GREY)])
    assert np.array_equal(rgb(la)[..., 1], GREY)
    cmyk = rgb_img.convert("CMYK")
    assert load_image(cmyk).mode == "RGB" and np.abs(rgb(cmyk).astype(int) - RGB).max() <= 1


def test_unreadable_modes_are_refused_by_name():
    im = Image.new("RGB", (4, 4))
    im._mode = "XYZ;9"  # no such picture mode: as Pillow would hand over an exotic one
    with pytest.raises(ValueError, match="is a XYZ;9 image, which cannot be read as an RGB picture"):
        as_viewed(im, "source")


def test_masks_are_read_as_viewed(tmp_path):
    m = np.zeros((40, 56), np.uint8)
    m[10:30, 20:40] = 255
    Image.fromarray(m.astype(np.uint16) * 257).save(tmp_path / "m16.png")
    assert np.array_equal(read_mask(tmp_path / "m16.png"), m > 127)
    exif = Image.Exif()
    exif[0x0112] = 8  # rotate 90° counter-clockwise
    Image.fromarray(m).save(tmp_path / "m.jpg", exif=exif, quality=100)
    assert read_mask(tmp_path / "m.jpg").shape == (56, 40)


def test_an_edit_of_a_16_bit_source_is_the_edit_of_its_8_bit_version(tiny_sd, tmp_path):
    import specref
    from test_editor import CFG, MASK, REF

    Image.fromarray(GREY).resize((128, 128)).save(tmp_path / "g8.png")
    Image.fromarray(np.asarray(Image.open(tmp_path / "g8.png")).astype(np.uint16) * 257).save(tmp_path / "g16.png")
    a, b = (specref.edit(tiny_sd, tmp_path / n, REF, CFG, reference_mask_file=Image.fromarray(MASK), progress=False)
            for n in ("g8.png", "g16.png"))
    assert np.array_equal(np.asarray(a.edit), np.asarray(b.edit))
