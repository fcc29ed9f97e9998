"""§4.3: Local Blend mask, by hand on toy maps."""
from __future__ import annotations

import pytest
import torch

from specref.blend import apply_blend, blend_start, local_blend_mask

T = 5  # tokens in the toy maps (77 in the pipeline)


def toy_maps(hot: dict[tuple[int, int], float], prompt: int, token: int, h: int = 4, L: int = 2) -> torch.Tensor:
    """Maps [2, L, h, h, T] that are zero except the given pixels for one prompt and token (on every layer)."""
    maps = torch.zeros(2, L, h, h, T)
    for (y, x), v in hot.items():
        maps[prompt, :, y, x, token] = v
    return maps


def words(src: list[int], tgt: list[int]) -> torch.Tensor:
    w = torch.zeros(2, T)
    w[0, src] = 1
    w[1, tgt] = 1
    return w


def test_blend_start():
    assert blend_start(50) == 10  # counter i + 1 > int(0.2 * 50) = 10  <=>  i >= 10
    assert blend_start(50, 0.0) == 0
    assert blend_start(20, 0.3) == 6


def test_one_hot_pixel_pooled_and_upsampled():
    maps = toy_maps({(1, 1): 1.0}, prompt=1, token=2)
    maps[0, :, 3, 3, 1] = 1.0  # the source's word is token 1, far corner
    mask = local_blend_mask(maps, words([1], [2]), (8, 8))
    assert mask.shape == (1, 1, 8, 8) and mask.dtype == torch.float32
    # tgt: pixel (1,1) -> pooled block rows/cols 0..2 -> nearest x2 -> 0..5; src: (3,3) -> block 2..3 -> 4..7
    expected = torch.zeros(8, 8)
    expected[0:6, 0:6] = 1
    expected[4:8, 4:8] = 1
    assert torch.equal(mask[0, 0], expected)


def test_words_select_tokens_and_average_layers():
    maps = torch.zeros(2, 2, 4, 4, T)
    maps[1, 0, 0, 0, 3] = 1.0   # token 3 (a blend word), layer 0 only: mean over layers = 0.5
    maps[1, 1, 3, 0, 3] = 0.2   # layer 1: mean 0.1 -> 0.1 / 0.5 = 0.2 <= 0.3, not in the mask
    maps[1, :, 0, 3, 4] = 9.0   # token 4 is not a blend word: ignored
    maps[0, :, 0, 0, 1] = 1.0
    mask = local_blend_mask(maps, words([1], [3]), (4, 4))[0, 0]
    expected = torch.zeros(4, 4)
    expected[0:2, 0:2] = 1
    assert torch.equal(mask, expected)


def test_threshold_is_strict():
    maps = torch.zeros(2, 1, 4, 4, T)
    maps[:, 0, 0, 0, 1] = 1.0
    maps[:, 0, 3, 3, 1] = 0.3  # exactly th after / max: not > 0.3
    mask = local_blend_mask(maps, words([1], [1]), (4, 4), th=(0.3, 0.3))[0, 0]
    assert mask[3, 3] == 0 and mask[2, 2] == 0 and mask[0, 0] == 1
    maps[:, 0, 3, 3, 1] = 0.31
    mask = local_blend_mask(maps, words([1], [1]), (4, 4), th=(0.3, 0.3))[0, 0]
    assert mask[2, 2] == 1 and mask[3, 3] == 1


def test_normalised_per_prompt():
    maps = toy_maps({(0, 0): 100.0}, prompt=0, token=1) + toy_maps({(3, 3): 0.01}, prompt=1, token=1)
    mask = local_blend_mask(maps, words([1], [1]), (4, 4))[0, 0]
    assert mask[0, 0] == 1 and mask[3, 3] == 1  # each prompt divided by its own max


def test_substruct_without_pooling():
    maps = toy_maps({(0, 0): 1.0, (0, 1): 1.0, (1, 0): 1.0, (1, 1): 1.0}, prompt=1, token=1)
    maps[0, :, 0, 0, 1] = 1.0
    maps[0, :, 1, 1, 4] = 1.0  # substruct word of the source: one pixel, not pooled
    maps[1, :, 0, 0, 3] = 1.0  # substruct word of the target
    maps[1, :, 2, 2, 3] = 0.2  # 0.2 <= th[1] = 0.3 -> not subtracted
    sub = torch.zeros(2, T)
    sub[0, 4] = 1
    sub[1, 3] = 1
    mask = local_blend_mask(maps, words([1], [1]), (4, 4), th=(0.3, 0.3), substruct=sub)[0, 0]
    expected = torch.zeros(4, 4)
    expected[0:3, 0:3] = 1  # the blend mask (pooled)
    expected[0, 0] = expected[1, 1] = 0  # minus sub_src OR sub_tgt
    assert torch.equal(mask, expected)


def test_no_attention_is_an_error():
    maps = toy_maps({(0, 0): 1.0}, prompt=1, token=1)
    with pytest.raises(ValueError, match="no cross-attention"):
        local_blend_mask(maps, words([1], [1]), (4, 4))
    maps[0, :, 0, 0, 1] = 1.0
    with pytest.raises(ValueError, match="substruct"):
        local_blend_mask(maps, words([1], [1]), (4, 4), substruct=words([2], [2]))


def test_apply_blend():
    x_src, x_tgt = torch.zeros(1, 4, 2, 2), torch.ones(1, 4, 2, 2)
    mask = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])
    out = apply_blend(x_src, x_tgt, mask)
    assert torch.equal(out[0, 0], torch.tensor([[1.0, 0.0], [0.0, 1.0]])) and out.shape == (1, 4, 2, 2)
