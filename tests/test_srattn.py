"""SR-attn math on hand-computed cases, the controller's layer/step/element ranges, and that the editor runs the one
`sr_attention` (docs/spec.md §4.4)."""
from __future__ import annotations

import math

import pytest
import torch

import specref.srattn
from model.attention import AttnSite, attention
from specref.controller import EditController
from specref.features import ReferenceFeatures
from specref.masks import MaskT
from specref.p2p import MapStore, P2PEdit, P2PPlan
from specref.references import WordGroup
from specref.srattn import ReferenceKeys, SRAttention


def sr_attention(q, k, v, k_ref, v_ref, heads, mask_s, mask_t, fused=True):
    """§4.4's SR-attn for one reference: the one function with one word group."""
    return specref.srattn.sr_attention(q, k, v, [ReferenceKeys(k_ref, v_ref, mask_s)], [mask_t], heads, fused)


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
    mask_s = torch.zeros(1, 8, 8)
    mask_s[0, 2:6, 2:6] = 1
    maps = MapStore(plan.map_blocks)
    maps.sum = torch.rand(2, 2, 2, 77)
    mask_t = MaskT(maps, [[2]], (8, 8), "nearest", 0.5)
    sr = SRAttention(feats, range(10, 16), range(4, 8), mask_s, [WordGroup(("w",), (0,), [2])], mask_t, "nearest", 0.5)
    return EditController(P2PEdit(plan, (8, 8)), maps, sr), hw


def test_the_controller_runs_sr_attention():
    """The SR hook's output for the conditional target is sr_attention's, on the layer's masks; the rest is plain."""
    ctrl, hw = make_controller()
    q, k, v = (torch.randn(4, 16, 16) for _ in range(3))
    site = AttnSite(12, "self", *hw, 2)
    out = ctrl.replace_output(site, 5, q, k, v)
    k_ref, v_ref = ctrl.sr.features.kv[(12, 5)]
    mask_s = ctrl.sr.mask_s_layer(hw)[0]
    mask_t = ctrl.sr.mask_t.at_layer(5, hw)[0]
    assert mask_s.shape == (16,) and 0 < int(mask_s.sum()) < 16 and mask_t.shape == (16,)
    want = sr_attention(q[3:], k[3:], v[3:], k_ref, v_ref, 2, mask_s, mask_t)
    assert torch.equal(out[3:], want)
    assert torch.equal(out[:3], attention(q[:3], k[:3], v[:3], 2))


def test_changing_sr_attention_changes_what_the_controller_does(monkeypatch):
    ctrl, hw = make_controller()
    q, k, v = (torch.randn(4, 16, 16) for _ in range(3))
    site = AttnSite(12, "self", *hw, 2)
    before = ctrl.replace_output(site, 5, q, k, v)
    monkeypatch.setattr(specref.srattn, "log_mask_bias", lambda m, dtype: torch.zeros(1, 1, 1, m.shape[-1]))
    unmasked = ctrl.replace_output(site, 5, q, k, v)
    assert torch.equal(unmasked[:3], before[:3]) and (unmasked[3] - before[3]).abs().max() > 1e-4


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
    assert k_kept.dtype == torch.float16 and torch.equal(k_kept, (k + 5)[1:2].half())
    assert torch.equal(v_kept, (k - 5)[1:2].half())


@pytest.mark.parametrize("blocks,stored", [((4, 5, 7, 8, 9), (4, 5, 7, 8, 9)), ((10, 11, 12), (10, 11, 12))])
def test_map_store_reads_only_map_blocks(blocks, stored):
    # Cross-attention probs of the four elements [u, u, c_src, c_tgt] at every block; the store keeps the head mean
    # of the conditional pair's maps, summed over the chosen blocks only (the default is §4.3's 4, 5, 7, 8, 9).
    plan = P2PPlan(alpha=torch.zeros(3, 77), self_range=(0, 0), map_blocks=blocks)
    ctrl = EditController(P2PEdit(plan, (16, 16)), MapStore(blocks), None)
    sides = [16, 16, 8, 8, 4, 4, 2, 4, 4, 4, 8, 8, 8, 16, 16, 16]
    want = 0
    for block, side in enumerate(sides):
        site = AttnSite(block, "cross", side, side, 2)
        assert ctrl.needs_probs(site, 1) == (block in stored)
        if block in stored:
            probs = torch.rand(4, 2, side * side, 77)
            want = want + probs[2:].mean(1).reshape(2, side, side, 77)
            ctrl.edit_probs(site, 1, probs.clone())
    assert torch.allclose(ctrl.maps.sum, want)
