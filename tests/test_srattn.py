"""SR-attn math on hand-computed cases and the controller's layer/step/element ranges (SPEC §4.4)."""
from __future__ import annotations

import math

import pytest
import torch

from model.attention import AttnSite, attention
from specref.controller import EditController, P2PPlan, ReferenceFeatures, SRPlan
from specref.srattn import sr_attention


def test_masked_softmax_hand_computed():
    q = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])            # 2 query pixels, 1 head of width 2
    k_ref = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])
    v_ref = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]]])
    mask_s = torch.tensor([True, False, True])
    # query 0: scores [1, 0, 1]/sqrt2 -> key 1 masked -> softmax [.5, 0, .5] -> [1.5, 1.0]
    # query 1: scores [0, 1, 1]/sqrt2 -> key 1 masked -> e^0, e^(1/sqrt2) over keys 0, 2
    w = math.exp(1 / math.sqrt(2))
    want_ref = torch.tensor([[1.5, 1.0], [2 * w / (1 + w), 2 * w / (1 + w) + 0.0]])
    want_ref[1, 0] = (1 * 1 + 2 * w) / (1 + w)
    want_ref[1, 1] = (0 * 1 + 2 * w) / (1 + w)
    k, v = torch.tensor([[[0.0, 0.0], [0.0, 0.0]]]), torch.tensor([[[5.0, 6.0], [7.0, 8.0]]])
    want_self = torch.tensor([[6.0, 7.0], [6.0, 7.0]])       # equal scores: the mean of v
    for fused in (True, False):
        out = sr_attention(q, k, v, k_ref, v_ref, 1, mask_s, None, fused=fused)[0]
        assert torch.allclose(out, want_ref, atol=1e-6)
        out = sr_attention(q, k, v, k_ref, v_ref, 1, mask_s, torch.tensor([True, False]), fused=fused)[0]
        assert torch.allclose(out, torch.stack([want_ref[0], want_self[1]]), atol=1e-6)
        # no masks = all-ones masks
        ones = sr_attention(q, k, v, k_ref, v_ref, 1, torch.ones(3, dtype=torch.bool), torch.ones(2, dtype=torch.bool))
        assert torch.allclose(sr_attention(q, k, v, k_ref, v_ref, 1, None, None, fused=fused), ones, atol=1e-6)


def test_batched_sr_attention_is_each_element_on_its_own():
    # train_toy's reference-attention stage calls sr_attention on a batch of pairs, with per-element masks
    g = torch.Generator().manual_seed(0)
    q, k, v, k_ref, v_ref = (torch.randn(3, 6, 8, generator=g) for _ in range(5))
    mask_s = torch.rand(3, 6, generator=g) > 0.5
    mask_s[:, 0] = True
    mask_t = torch.rand(3, 6, generator=g)  # soft weights are allowed, as in the blend formula
    out = sr_attention(q, k, v, k_ref, v_ref, 2, mask_s, mask_t)
    for b in range(3):
        one = sr_attention(q[b:b + 1], k[b:b + 1], v[b:b + 1], k_ref[b:b + 1], v_ref[b:b + 1], 2, mask_s[b], mask_t[b])
        assert torch.allclose(out[b:b + 1], one, atol=1e-6)
    mask_s[1] = False
    with pytest.raises(ValueError, match="mask_s selects no reference key"):
        sr_attention(q, k, v, k_ref, v_ref, 2, mask_s, mask_t)


def test_all_keys_masked_is_an_error_not_nan():
    q = k = v = torch.randn(1, 4, 8)
    with pytest.raises(ValueError, match="mask_s selects no reference key"):
        sr_attention(q, k, v, k, v, 2, torch.zeros(4, dtype=torch.bool), None)


def make_controller(n=10):
    feats = ReferenceFeatures(n, range(10, 16), range(4, 8))
    hw = (4, 4)
    feats.kv = {(b, s): (torch.randn(1, 16, 16), torch.randn(1, 16, 16)) for b in range(10, 16) for s in range(4, 8)}
    plan = P2PPlan(alpha=torch.zeros(n + 1, 77), self_range=(0, 0))
    mask_s = torch.zeros(8, 8)
    mask_s[2:6, 2:6] = 1
    sr = SRPlan(feats, range(10, 16), range(4, 8), mask_s=mask_s, target_tokens=[2], thres=0.5, interp="nearest")
    ctrl = EditController(plan, sr, latent_hw=(8, 8))
    m = torch.rand(2, 2, 2, 77)
    ctrl.map_sum = m
    return ctrl, hw


def test_sr_only_in_its_layers_and_steps_and_only_on_the_conditional_target():
    ctrl, hw = make_controller()
    q, k, v = (torch.randn(4, 16, 16) for _ in range(3))
    plain = attention(q, k, v, 2)
    for block, step in [(9, 5), (10, 3), (10, 8), (16, 5)]:
        assert ctrl.replace_output(AttnSite(block, "self", *hw, 2), step, q, k, v) is None
    assert ctrl.replace_output(AttnSite(12, "cross", *hw, 2), 5, q, k, v) is None
    out = ctrl.replace_output(AttnSite(12, "self", *hw, 2), 5, q, k, v)
    assert torch.equal(out[:3], plain[:3])  # uncond pair and conditional source untouched
    assert (out[3] - plain[3]).abs().max() > 1e-3


def test_reference_features_keep_only_used_layers_and_steps():
    n = 10
    feats = ReferenceFeatures(n, range(10, 16), range(4, 8), dtype=torch.float16)
    k = torch.randn(2, 16, 8)
    for j in range(n):
        for block in range(16):
            for kind in ("self", "cross"):
                feats.on_qkv(AttnSite(block, kind, 4, 4, 1), j, k, k + j, k - j)
    assert set(feats.kv) == {(b, s) for b in range(10, 16) for s in range(4, 8)}
    k_kept, v_kept = feats.kv[(11, 4)]  # edit step 4 <- inversion step N-1-4 = 5, reference element 1
    assert k_kept.dtype == torch.float16 and torch.equal(k_kept, (k + 5)[1:2].half()) and torch.equal(v_kept, (k - 5)[1:2].half())


@pytest.mark.parametrize("blocks,stored", [((4, 5, 7, 8, 9), (4, 5, 7, 8, 9)), ((10, 11, 12), (10, 11, 12))])
def test_map_store_reads_only_map_blocks(blocks, stored):
    # Cross-attention probs of the four elements [u, u, c_src, c_tgt] at every block; the store keeps the head mean
    # of the conditional pair's maps, summed over the chosen blocks only (the default is SPEC §4.3's 4, 5, 7, 8, 9).
    plan = P2PPlan(alpha=torch.zeros(3, 77), self_range=(0, 0), map_blocks=blocks)
    ctrl = EditController(plan, None, latent_hw=(16, 16))
    sides = [16, 16, 8, 8, 4, 4, 2, 4, 4, 4, 8, 8, 8, 16, 16, 16]
    want = 0
    for block, side in enumerate(sides):
        site = AttnSite(block, "cross", side, side, 2)
        assert ctrl.needs_probs(site, 1) == (block in stored)
        if block in stored:
            probs = torch.rand(4, 2, side * side, 77)
            want = want + probs[2:].mean(1).reshape(2, side, side, 77)
            ctrl.edit_probs(site, 1, probs.clone())
    assert torch.allclose(ctrl.map_sum, want)
