"""§4.4 / §5: reading masks, point-sampled resizes, mask_t from the cross-attention maps."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from specref.masks import EmptyMaskError, mask_t_from_maps, read_mask, resize_mask

SQUARE = torch.tensor([[0, 0, 0, 0], [0, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0]], dtype=torch.float32)


# ---------------------------------------------------------------- resizes, checked by hand
def test_nearest_down_and_up():
    assert resize_mask(SQUARE, (2, 2), "nearest", 0.5).tolist() == [[False, False], [False, True]]  # in[2i, 2j]
    up = resize_mask(SQUARE, (8, 8), "nearest", 0.5)
    expected = torch.zeros(8, 8, dtype=torch.bool)
    expected[2:6, 2:6] = True
    assert torch.equal(up, expected)
    # 4 -> 3: source index floor(dst * 4/3) = 0, 1, 2
    want = [[False] * 3, [False, True, True], [False, True, True]]
    assert resize_mask(SQUARE, (3, 3), "nearest", 0.5).tolist() == want


def test_bilinear_down_is_point_sampled():
    # 4 -> 2: source coordinate (d + 0.5) * 2 - 0.5 = 0.5, 2.5: the mean of each 2x2 quadrant = 0.25 (no area filter)
    assert bool(resize_mask(SQUARE, (2, 2), "bilinear", 0.25).all())
    with pytest.raises(EmptyMaskError, match=r"\(2, 2\)"):
        resize_mask(SQUARE, (2, 2), "bilinear", 0.3)


def test_bilinear_up_by_hand():
    # 1-D profile [0, 1, 1, 0] at 8: coordinates d/2 - 0.25 (clamped at 0) -> [0, .25, .75, 1, 1, .75, .25, 0]
    # 2-D = outer product; corners of the middle block are .75 * .75 = .5625
    block = torch.zeros(8, 8, dtype=torch.bool)
    block[2:6, 2:6] = True
    assert torch.equal(resize_mask(SQUARE, (8, 8), "bilinear", 0.5), block)
    no_corners = block.clone()
    no_corners[[2, 2, 5, 5], [2, 5, 2, 5]] = False
    assert torch.equal(resize_mask(SQUARE, (8, 8), "bilinear", 0.6), no_corners)
    want = torch.ones(8, 8, dtype=torch.bool) & ~_border(8)
    assert torch.equal(resize_mask(SQUARE, (8, 8), "bilinear", 0.0625), want)


def _border(n: int) -> torch.Tensor:
    b = torch.zeros(n, n, dtype=torch.bool)
    b[0], b[-1], b[:, 0], b[:, -1] = True, True, True, True
    return b


def _np_resize(x: np.ndarray, size: tuple[int, int], interp: str) -> np.ndarray:
    """Independent align_corners=False sampling: nearest = floor(d * in/out); bilinear at (d + .5) * in/out - .5."""
    def axis(n_in: int, n_out: int):
        scale = n_in / n_out
        if interp == "nearest":
            i0 = np.minimum(np.floor(np.arange(n_out) * scale).astype(int), n_in - 1)
            return i0, i0, np.zeros(n_out)
        c = np.maximum((np.arange(n_out) + 0.5) * scale - 0.5, 0.0)
        i0 = np.minimum(np.floor(c).astype(int), n_in - 1)
        return i0, np.minimum(i0 + 1, n_in - 1), c - i0

    (y0, y1, wy), (x0, x1, wx) = axis(x.shape[0], size[0]), axis(x.shape[1], size[1])
    top = x[y0][:, x0] * (1 - wx) + x[y0][:, x1] * wx
    bot = x[y1][:, x0] * (1 - wx) + x[y1][:, x1] * wx
    return top * (1 - wy[:, None]) + bot * wy[:, None]


@pytest.mark.parametrize("interp", ["nearest", "bilinear"])
@pytest.mark.parametrize("src,size", [((16, 16), (64, 64)), ((16, 16), (32, 32)), ((16, 16), (8, 8)),
                                      ((64, 64), (16, 16)), ((5, 7), (9, 4))])
def test_resize_matches_numpy(interp, src, size):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(src, generator=g)
    ref = _np_resize(x.double().numpy(), size, interp)
    out = resize_mask(x, size, interp, 0.5)
    far = np.abs(ref - 0.5) > 1e-5  # ignore float32 rounding right at the threshold
    assert np.array_equal(out.numpy()[far], (ref >= 0.5)[far])


def test_resize_bad_interp():
    with pytest.raises(ValueError, match="interp"):
        resize_mask(SQUARE, (2, 2), "bicubic", 0.5)


# ---------------------------------------------------------------- mask_t
def test_mask_t_min_max_and_columns():
    maps = torch.zeros(2, 2, 77)
    maps[..., 5] = torch.tensor([[2.0, 3.0], [4.0, 6.0]])
    maps[..., 6] = 1.0      # constant second word: shifts, min-max removes it
    maps[..., 7] = 100.0    # not a target word
    maps[0, 0, 7] = 0.0
    # sum = [[3, 4], [5, 7]] -> (x - 3) / 4 = [[0, .25], [.5, 1]]
    out = mask_t_from_maps(maps, [5, 6], (2, 2), "nearest", 0.5)
    assert out.tolist() == [[False, False], [True, True]]
    out = mask_t_from_maps(maps * 1000, [5, 6], (2, 2), "bilinear", 0.25)  # scale-free; same size = identity
    assert out.tolist() == [[False, True], [True, True]]
    up = mask_t_from_maps(maps, [5, 6], (4, 4), "nearest", 0.5)
    assert up.tolist() == [[False] * 4, [False] * 4, [True] * 4, [True] * 4]


def test_mask_t_constant_is_an_error():
    maps = torch.rand(4, 4, 77)
    maps[..., 3] = 0.25
    with pytest.raises(ValueError, match="constant"):
        mask_t_from_maps(maps, [3], (8, 8), "bilinear", 0.5)
    with pytest.raises(ValueError):
        mask_t_from_maps(maps, [], (8, 8), "bilinear", 0.5)


# ---------------------------------------------------------------- reading
def _save(tmp_path: Path, name: str, arr: np.ndarray, mode: str, **kw) -> Path:
    p = tmp_path / name
    Image.fromarray(arr, mode).save(p, **kw)
    return p


def test_read_l_mask(tmp_path):
    a = np.zeros((6, 6), np.uint8)
    a[1:3, 1:3] = 255
    a[4, 4] = 128  # > 127 counts
    a[5, 5] = 127  # does not
    m = read_mask(_save(tmp_path, "m.png", a, "L"))
    expected = np.zeros((6, 6), bool)
    expected[1:3, 1:3] = True
    expected[4, 4] = True
    assert m.dtype == bool and np.array_equal(m, expected)
    assert np.array_equal(read_mask(Image.fromarray(a > 127)), expected)  # mode "1"


def test_read_rgb_mask_ignores_ringing(tmp_path):
    a = np.full((8, 8, 3), 7, np.uint8)  # near-black ringing 3..10 around the object
    a[::2] = 3
    a[:, ::3] = 10
    a[2:5, 2:6] = 250
    p = _save(tmp_path, "m.png", a, "RGB")
    assert np.array_equal(read_mask(p), a[..., 0] > 127)
    assert read_mask(p, kind="nonblack").all()  # the reference's reading takes in the ringing


def test_read_jpeg_mask(tmp_path):
    a = np.zeros((64, 64, 3), np.uint8)
    a[16:40, 20:50] = 255
    p = _save(tmp_path, "m.jpg", a, "RGB", quality=60)
    decoded = np.asarray(Image.open(p).convert("L"))
    outside = np.ones((64, 64), bool)
    outside[14:42, 18:52] = False
    assert ((decoded > 0) & (decoded <= 127)).any()  # the compression left ringing
    m = read_mask(p)
    assert not m[outside].any() and m[18:38, 22:48].all()
    assert read_mask(p, kind="nonblack").sum() > m.sum()


def test_read_rgba_cutout(tmp_path):
    a = np.zeros((6, 6, 4), np.uint8)
    a[1:4, 1:4] = (20, 30, 40, 255)  # dark object pixels: alpha decides, not brightness
    a[5, 0] = (0, 0, 0, 1)           # faint alpha > 0 counts
    p = _save(tmp_path, "c.png", a, "RGBA")
    expected = a[..., 3] > 0
    for kind in ("auto", "alpha", "cutout"):
        assert np.array_equal(read_mask(p, kind=kind), expected), kind
    la = Image.fromarray(a[..., [0, 3]], "LA")
    assert np.array_equal(read_mask(la), expected)


def test_read_rgba_opaque_is_a_mask(tmp_path):
    a = np.zeros((4, 4, 4), np.uint8)
    a[..., 3] = 255
    a[0, 0, :3] = 255
    a[1, 1, :3] = 60  # not white: not an object under "mask"
    expected = np.zeros((4, 4), bool)
    expected[0, 0] = True
    assert np.array_equal(read_mask(Image.fromarray(a, "RGBA")), expected)
    assert read_mask(Image.fromarray(a, "RGBA"), kind="cutout").sum() == 2  # opaque cutout: non-black


def test_read_rgb_cutout_on_black(tmp_path):
    a = np.zeros((5, 5, 3), np.uint8)
    a[1:3, 1:3] = (90, 10, 0)
    a[4, 4] = (0, 0, 1)  # any channel > 0
    p = _save(tmp_path, "c.png", a, "RGB")
    expected = a.max(-1) > 0
    assert np.array_equal(read_mask(p, kind="nonblack"), expected)
    assert np.array_equal(read_mask(p, kind="cutout"), expected)
    with pytest.raises(ValueError, match="no alpha"):
        read_mask(p, kind="alpha")


def test_read_errors(tmp_path):
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    with pytest.raises(ValueError, match="notes.png"):
        read_mask(bad)
    with pytest.raises(ValueError, match="missing.png"):
        read_mask(tmp_path / "missing.png")
    empty = _save(tmp_path, "empty.png", np.full((4, 4), 100, np.uint8), "L")
    with pytest.raises(ValueError, match="empty.png is empty"):
        read_mask(empty)
    with pytest.raises(ValueError, match="kind"):
        read_mask(empty, kind="luma")


MIRROR_MASK = Path(__file__).resolve().parents[2] / "shared/examples/mirror-tiger/reference_mask.jpg"


@pytest.mark.skipif(not MIRROR_MASK.exists(), reason="example images not available")
def test_mirror_tiger_mask_file():
    m, nb = read_mask(MIRROR_MASK), read_mask(MIRROR_MASK, kind="nonblack")
    assert m.shape == (512, 512)
    assert 0.005 < nb.mean() - m.mean() < 0.03  # about 1 % of the pixels are JPEG ringing (§4.4)
