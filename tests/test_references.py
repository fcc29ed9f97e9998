"""Several references, one per target word, auto mask_s (docs/spec.md §8) — hand-computed cases and tiny-model
properties. Some tests use the earlier names (words=, reference_words, reference_thres) on purpose: they are aliases."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

import specref
from specref import Reference
from specref.inputs import prepare
from specref.masks import mask_t_from_maps, mask_t_map, word_masks
from specref.pipeline import edit_stage, invert, stage1_key
from specref.references import auto_mask_s
from specref.srattn import ReferenceKeys, sr_attention
from test_editor import CFG, MASK, REF, SRC, RecordingUNet

g = torch.Generator().manual_seed(0)


def sr_attention_groups(q, k, v, refs, masks_t, heads, fused=True):
    return sr_attention(q, k, v, [ReferenceKeys(*r) for r in refs], masks_t, heads, fused)


def sr_one(q, k, v, k_ref, v_ref, heads, mask_s, mask_t):
    return sr_attention(q, k, v, [ReferenceKeys(k_ref, v_ref, mask_s)], [mask_t], heads)


rand = lambda *s: torch.randn(*s, generator=g)  # noqa: E731


# ---- hand-computed cases -------------------------------------------------------------------------
def test_concatenated_keys_masked_softmax_by_hand():
    q, k1, v1, k2, v2 = rand(1, 3, 2), rand(1, 4, 2), rand(1, 4, 2), rand(1, 5, 2), rand(1, 5, 2)
    m1, m2 = torch.tensor([1, 0, 1, 1], dtype=torch.bool), torch.tensor([0, 1, 1, 0, 0], dtype=torch.bool)
    k, v, m = torch.cat([k1, k2], 1), torch.cat([v1, v2], 1), torch.cat([m1, m2])
    out = sr_attention_groups(q, q, q, [(k, v, m)], [None], heads=1, fused=False)
    # softmax(Q [K1; K2]^T * scale + log[m1; m2]) [V1; V2], written out: only the masked-in keys count
    w = torch.exp((q[0] @ k[0].T) / 2**0.5) * m
    assert torch.allclose(out[0], (w / w.sum(-1, keepdim=True)) @ v[0], atol=1e-6)
    # the second reference fully masked out: the first one alone
    alone = sr_attention_groups(q, q, q, [(k, v, torch.cat([m1, torch.zeros(5, dtype=torch.bool)]))], [None], 1)
    assert torch.allclose(alone, sr_one(q, q, q, k1, v1, 1, m1, None), atol=1e-6)
    # the same reference twice with the same mask: the softmax over duplicated keys is the same
    dup = sr_attention_groups(q, q, q, [(torch.cat([k1, k1], 1), torch.cat([v1, v1], 1), torch.cat([m1, m1]))],
                              [None], 1)
    assert torch.allclose(dup, sr_one(q, q, q, k1, v1, 1, m1, None), atol=1e-6)


def test_one_group_is_sr_attention_bit_for_bit():
    q, k, v, kr, vr = rand(1, 16, 8), rand(1, 16, 8), rand(1, 16, 8), rand(1, 12, 8), rand(1, 12, 8)
    ms, mt = torch.rand(12, generator=g) > 0.4, torch.rand(16, generator=g) > 0.5
    assert torch.equal(sr_attention_groups(q, k, v, [(kr, vr, ms)], [mt], 2), sr_one(q, k, v, kr, vr, 2, ms, mt))


def test_per_word_blend_by_hand():
    # constant V per reference group: each group's out_ref is its constant whatever the softmax; out_self too
    n, c = 6, 2
    q, k = rand(1, n, c), rand(1, n, c)
    v_self = torch.full((1, n, c), 1.0)
    refs = [(rand(1, 3, c), torch.full((1, 3, c), 10.0), None), (rand(1, 4, c), torch.full((1, 4, c), 100.0), None)]
    m1 = torch.tensor([1, 1, 0, 0, 0, 0], dtype=torch.bool)
    m2 = torch.tensor([0, 0, 0, 1, 1, 0], dtype=torch.bool)
    out = sr_attention_groups(q, k, v_self, refs, [m1, m2], heads=1)
    assert torch.allclose(out[0, :, 0], torch.tensor([10.0, 10, 1, 100, 100, 1]))
    # soft masks (in [0, 1], summing to <= 1): out = Σ_j m_j out_ref_j + (1 − Σ_j m_j) out_self
    s1, s2 = torch.tensor([0.5, 0.2, 0, 0, 0, 0]), torch.tensor([0.5, 0, 0, 0, 0, 0])
    out = sr_attention_groups(q, k, v_self, refs, [s1, s2], heads=1)
    assert torch.allclose(out[0, :2, 0], torch.tensor([0.5 * 10 + 0.5 * 100, 0.2 * 10 + 0.8 * 1]))


def test_overlap_rule():
    maps = torch.zeros(4, 4, 77)
    maps[:, :2, 1] = 1.0          # word A: left half, 1.0
    maps[:, 1:3, 2] = 1.5         # word B: middle (normalised 0.75), overlaps A in column 1 ...
    maps[:, 1, 2] = 2.0           # ... where both normalised maps are 1.0: a tie
    maps[0, 1, 1] = 0.5           # row 0: A's normalised map is 0.5 < B's 1.0 -> B wins
    norm = [mask_t_map(maps, [1]), mask_t_map(maps, [2])]  # each word's min-max normalised map (§4.4)
    a, b = word_masks(norm, (4, 4), "nearest", 0.5)
    assert not bool((a & b).any())                                  # disjoint
    assert a[1:, 1].all() and not b[1:, 1].any()                   # a tie goes to the earlier word
    assert b[0, 1] and not a[0, 1]                                  # the larger normalised map wins
    assert a[:, 0].all() and b[:, 2].all() and not (a | b)[:, 3].any()  # disjoint parts stay each word's
    # one word: exactly §4.4's mask_t
    assert torch.equal(word_masks(norm[:1], (8, 8), "bilinear", 0.5)[0],
                       mask_t_from_maps(maps, [1], (8, 8), "bilinear", 0.5))


# ---- the seeded tiny model -----------------------------------------------------------------------
def edit(sd, refs, cfg=CFG, **kw):
    return specref.edit(sd, SRC, refs, cfg, progress=False, **kw)


@pytest.fixture(scope="module")
def one(tiny_sd):
    return specref.edit(tiny_sd, SRC, REF, CFG, reference_mask_file=Image.fromarray(MASK), progress=False)


def test_one_reference_in_the_new_api_is_todays_edit(tiny_sd, one):
    new = edit(tiny_sd, [Reference(REF, mask=MASK)])
    assert torch.equal(new.latents["edit_latent"], one.latents["edit_latent"])
    # bound to the one target word with --for: the same edit too
    bound = edit(tiny_sd, [Reference(REF, mask=MASK, words="tiger")])
    assert torch.equal(bound.latents["edit_latent"], one.latents["edit_latent"])
    assert torch.equal(bound.mask_t, one.mask_t) and list(bound.masks_t) == ["tiger"]


def test_two_identical_references_are_one(tiny_sd, one):
    two = edit(tiny_sd, [Reference(REF, mask=MASK)] * 2)
    # same math; the stage-1 batch of 3 instead of 2 rounds differently (measured 2.5e-5)
    assert torch.allclose(two.latents["edit_latent"], one.latents["edit_latent"], atol=2e-4)
    assert two.feature_bytes == 2 * one.feature_bytes  # K/V grow linearly with the references
    assert len(two.masks_s) == 2


def test_two_words_two_references(tiny_sd, one):
    cfg = CFG.replace(target_prompt="a tiger sitting next to a vase", mode="refine", blend_words=None, thres=0.5)
    ref2 = Image.fromarray(np.full((64, 80, 3), 200, np.uint8))  # another size: resized to the working size
    r = edit(tiny_sd, [Reference(REF, mask=MASK, words="tiger"), Reference(ref2, words="vase")], cfg)
    assert list(r.masks_t) == ["tiger", "vase"] and r.config.target_words == ("tiger", "vase")
    a, b = r.masks_t["tiger"], r.masks_t["vase"]
    assert not bool((a & b).any()) and torch.equal(r.mask_t, a | b)


def test_auto_mask_reads_the_inversion(tiny_sd):
    rec = RecordingUNet(tiny_sd.unet)
    sd = dataclasses.replace(tiny_sd, unet=rec)
    cfg = CFG.replace(reference_prompt="a tiger", reference_words=("tiger",), reference_thres=0.5)
    cfg, prep = prepare(sd, SRC, Reference(REF, mask="auto"), cfg)
    assert prep.masks_s == [None]  # found in stage 1
    inv = invert(sd, prep, cfg, range(10, 16), range(1, CFG.steps), progress=False)
    r = edit_stage(sd, prep, inv, cfg, progress=False)
    assert len(rec.calls) == 2 * CFG.steps  # no extra model calls: N inversion + N edit
    assert inv.reference_maps.shape == (1, 4, 4, 77)  # the map blocks' level: latent/4
    assert inv.key != stage1_key(cfg) and inv.key == stage1_key(cfg, prep.references)
    # the mask that was used is the reference's maps of its word, min-max normalised, resized and thresholded
    m = r.mask_s
    assert m.shape == (128, 128) and m.dtype == bool and 0 < m.mean() < 1
    assert np.array_equal(m, mask_t_from_maps(inv.reference_maps[0], prep.auto_mask_tokens[0], (128, 128),
                                              cfg.interp, 0.5).numpy())
    assert auto_mask_s(inv.reference_maps[0], prep.auto_mask_tokens[0], (128, 128), cfg.interp, 0.2).sum() > m.sum()
    with pytest.raises(ValueError, match="selects nothing.*lower --auto-mask-thres"):
        auto_mask_s(torch.ones(4, 4, 77), [2], (128, 128), cfg.interp, 0.5)


def test_stage1_key(tiny_sd):
    cfg, prep = prepare(tiny_sd, SRC, REF, CFG, Image.fromarray(MASK))
    assert stage1_key(cfg, prep.references) == stage1_key(cfg)  # one plain reference: as before
    _, two = prepare(tiny_sd, SRC, [Reference(REF, mask=MASK)] * 2, CFG)
    assert stage1_key(cfg, two.references) != stage1_key(cfg)
    # mask words and threshold are stage 2 (every token's map is kept): sweeps over them share one inversion
    assert stage1_key(cfg.replace(reference_words=("x",), reference_thres=0.3)) == stage1_key(cfg)


@pytest.mark.parametrize("refs,change,match", [
    ([Reference(REF, mask="auto")], {}, "an auto mask needs its words"),
    ([Reference(REF, mask="auto")], dict(reference_words=("tiger",)), "reference-prompt that contains 'tiger'"),
    ([Reference(REF, words="lion")], {}, "word 'lion' is not in the prompt"),
    ([Reference(REF, words=("tiger", "tiger"))], {}, "same word twice"),
    ([Reference(REF, words="tiger"), Reference(REF, words=("tiger", "mirror"))], {}, "'tiger' is bound twice"),
    ([Reference(REF, words="tiger"), Reference(REF)], {}, "bind every reference"),
    ([Reference(REF, words="tiger"), Reference(REF, words="mirror")], dict(masks="s"), "needs each word's mask_t"),
    ([], {}, "reference list is empty"),
])
def test_bad_references_fail_before_work(tiny_sd, refs, change, match):
    with pytest.raises(ValueError, match=match):
        prepare(tiny_sd, SRC, refs, CFG.replace(**change))
