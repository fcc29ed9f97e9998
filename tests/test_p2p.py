"""§4.1: Replace / Refine mappers, Reweight, word-time alphas, the cross-attention edit."""
from __future__ import annotations

import pytest
import torch

from model.tokenizer import CLIPTokenizer
from specref.p2p import (
    DIAG, LEFT, STOP, UP, align_mapper, cross_replace_alpha, edit_cross, edit_refine, edit_replace,
    global_align, refine_mapper, replace_mapper, reweight_equalizer, self_replace_range,
)

B, E = 49406, 49407


@pytest.fixture(scope="module")
def tok() -> CLIPTokenizer:
    return CLIPTokenizer.bundled()


def shifted_identity(pairs: list[tuple[int, int]], start: tuple[int, int]) -> torch.Tensor:
    """Expected M: the given (i, j) entries = 1, then i -> j continuing from `start` until either hits 77."""
    m = torch.zeros(77, 77)
    for i, j in pairs:
        m[i, j] = 1
    i, j = start
    while i < 77 and j < 77:
        m[i, j] = 1
        i, j = i + 1, j + 1
    return m


# ---------------------------------------------------------------- Replace
def test_replace_same_token_count_is_identity(tok):
    assert torch.equal(replace_mapper(tok, "a cat sitting", "a dog sitting"), torch.eye(77))
    # mirror-tiger / mirror-dog13 / dogshirt-shirt: one token replaced by one token
    assert torch.equal(replace_mapper(tok, "a cat sitting next to a mirror", "a tiger sitting next to a mirror"),
                       torch.eye(77))
    assert torch.equal(replace_mapper(tok, "two dogs wearing red clothes", "two dogs wearing blue clothes"),
                       torch.eye(77))


def test_replace_different_token_count_spec_fix(tok):
    # source: 0 bos, 1 a, 2 cat, 3 sitting, 4 eos; target: 0 bos, 1 a, 2 chec, 3 kered, 4 sitting, 5 eos
    m = replace_mapper(tok, "a cat sitting", "a checkered sitting")
    expected = shifted_identity([(0, 0), (1, 1), (3, 4)], start=(4, 5))
    expected[2, 2] = expected[2, 3] = 0.5  # 1/m spread, m = 2 target tokens
    assert torch.equal(m, expected)
    assert m[3, 3] == 0 and m[3, 4] == 1  # "sitting": i -> j, not the reference's j -> j
    assert m[76].sum() == 0  # the last source position has no target left


def test_replace_two_source_tokens_to_one(tok):
    # source: 1 a, 2 chec, 3 kered, 4 cat, 5 eos; target: 1 a, 2 red, 3 cat, 4 eos
    m = replace_mapper(tok, "a checkered cat", "a red cat")
    expected = shifted_identity([(0, 0), (1, 1), (2, 2), (3, 2), (4, 3)], start=(5, 4))
    assert torch.equal(m, expected)
    a = torch.rand(2, 5, 77)
    out = edit_replace(a, m)
    assert torch.allclose(out[..., 2], a[..., 2] + a[..., 3])  # both source tokens flow into "red"
    assert torch.equal(out[..., 3], a[..., 4])


def test_replace_two_changed_words_equal_counts(tok):
    # two changed words, 2 tokens each side: position by position, so the identity
    src, tgt = "a checkered cat", "a shiba dalmatian"
    s, t = tok.encode(src), tok.encode(tgt)
    assert (len(s.spans), len(t.spans)) == (4, 5)  # a chec kered cat / a shi ba dal matian
    m = replace_mapper(tok, "a checkered pinecone", "a shiba dalmatian")
    assert torch.equal(m, torch.eye(77))
    # then "cat" (1) -> "dalmatian" (2): the rest shifts by one
    m = replace_mapper(tok, src, tgt)
    expected = shifted_identity([(0, 0), (1, 1), (2, 2), (3, 3)], start=(5, 6))
    expected[4, 4] = expected[4, 5] = 0.5
    assert torch.equal(m, expected)


def test_replace_word_count_mismatch(tok):
    with pytest.raises(ValueError, match=r"source has 3 .* target 4"):
        replace_mapper(tok, "a cat sitting", "a big dog sitting")


def test_replace_dogshirt_shirt_edit(tok):
    m = replace_mapper(tok, "two dogs wearing red clothes", "two dogs wearing blue clothes")
    a = torch.rand(3, 4, 77)
    assert torch.equal(edit_replace(a, m), a)


# ---------------------------------------------------------------- Refine: the aligner
def test_traceback_single_mismatch():
    # S = [[0, 0], [0, 0]]; at (1,1) left = up = 0 > diag = -1 -> left
    assert global_align([7], [8]).tolist() == [[STOP, LEFT], [UP, LEFT]]
    m, a = align_mapper([7], [8], max_len=4)
    assert m.tolist() == [-1, 1, 2, 3] and a.tolist() == [0, 1, 1, 1]


def test_traceback_small_by_hand():
    # x = [5, 7], y = [5, 8]; scores: row1 = [0, 1, 1], row2 = [0, 1, 1]
    tb = global_align([5, 7], [5, 8])
    assert tb.tolist() == [[STOP, LEFT, LEFT], [UP, DIAG, LEFT], [UP, UP, LEFT]]
    m, a = align_mapper([5, 7], [5, 8], max_len=5)
    assert m.tolist() == [0, -1, 2, 3, 4] and a.tolist() == [1, 0, 1, 1, 1]


def test_tie_left_before_diagonal():
    # target repeats a token: at (2, 3) left = diag = 2 -> left, so the FIRST target 'a' keeps the source 'a'
    m, a = align_mapper([B, 1, E], [B, 1, 1, E], max_len=6)
    assert m.tolist() == [0, 1, -1, 2, 4, 5]
    assert a.tolist() == [1, 1, 0, 1, 1, 1]


def test_tie_up_before_diagonal():
    # source repeats a token: at (3, 2) up = diag = 2 -> up, so the SECOND source 'a' is dropped
    m, a = align_mapper([B, 1, 1, E], [B, 1, E], max_len=5)
    assert m.tolist() == [0, 1, 3, 3, 4]
    assert a.tolist() == [1, 1, 1, 1, 1]


def test_aligner_traceback_codes_full():
    tb = global_align([B, 1, E], [B, 1, 1, E])
    assert tb[0].tolist() == [STOP, LEFT, LEFT, LEFT, LEFT]
    assert tb[:, 0].tolist() == [STOP, UP, UP, UP]
    assert tb[1:, 1:].tolist() == [[DIAG, LEFT, LEFT, LEFT], [UP, DIAG, LEFT, LEFT], [UP, UP, LEFT, DIAG]]


# ---------------------------------------------------------------- Refine: presets
def _positions(tok, prompt):
    enc = tok.encode(prompt)
    return {prompt[s:e].lower(): k + 1 for k, (s, e) in enumerate(enc.spans)}, len(enc.spans) + 2


def test_refine_identical_prompts(tok):
    m, a = refine_mapper(tok, "a vase of flowers", "a vase of flowers")
    assert torch.equal(m, torch.arange(77)) and torch.equal(a, torch.ones(77))


@pytest.mark.parametrize("src,tgt,new,kept", [
    ("two dogs standing on a board, lake behind", "two dogs standing on a mattress, in the bedroom",
     ["mattress", "in", "the", "bedroom"], ["two", "dogs", "standing", "on", "a", ","]),
    ("A person, wearing white dress, sitting on the bench, reading a book",
     "A person, wearing colorful plaid dress, sitting on the bench, reading a book",
     ["colorful", "plaid"], ["person", "wearing", "dress", "sitting", "bench", "reading", "book"]),
    ("A human-like toy is sitting on a cushion", "A human-like toy is sitting on a birthday cake",
     ["birthday", "cake"], ["human", "-", "like", "toy", "is", "sitting", "on"]),
    ("a vase of carnation", "a vase of flowers", ["flowers"], ["vase", "of"]),
])
def test_refine_presets(tok, src, tgt, new, kept):
    m, a = refine_mapper(tok, src, tgt)
    spos, n_src = _positions(tok, src)
    tpos, n_tgt = _positions(tok, tgt)
    for w in new:
        assert m[tpos[w]] == -1 and a[tpos[w]] == 0, w
    for w in kept:  # first occurrence ("," / "a" occur once before the change in these prompts)
        assert m[tpos[w]] == spos[w] and a[tpos[w]] == 1, w
    assert m[0] == 0 and m[n_tgt - 1] == n_src - 1  # bos -> bos, eos -> eos
    assert torch.equal(m[n_tgt:], torch.arange(n_tgt, 77)) and bool((a[n_tgt:] == 1).all())
    assert int((a == 0).sum()) == len(new)


def test_refine_human6_exact(tok):
    src = "A person, wearing white dress, sitting on the bench, reading a book"
    tgt = "A person, wearing colorful plaid dress, sitting on the bench, reading a book"
    m, a = refine_mapper(tok, src, tgt)
    # "white" (source 5) is dropped; "colorful plaid" (target 5, 6) are new; the rest shifts by one
    assert m[:19].tolist() == [0, 1, 2, 3, 4, -1, -1, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 18]


def test_edit_refine_new_tokens_take_target():
    mapper = torch.tensor([0, 2, -1, 3])
    alphas = torch.tensor([1.0, 1.0, 0.0, 1.0])
    a_src = torch.tensor([[[0.1, 0.2, 0.3, 0.4]]])
    a_tgt = torch.tensor([[[0.5, 0.6, 0.7, 0.8]]])
    out = edit_refine(a_src, a_tgt, mapper, alphas)
    assert torch.allclose(out, torch.tensor([[[0.1, 0.3, 0.7, 0.4]]]))
    a_src[..., -1] = float("inf")  # whatever the -1 index might read, it must not leak in
    assert torch.isfinite(edit_refine(a_src, a_tgt, mapper, alphas)[..., 2]).all()


# ---------------------------------------------------------------- Reweight, alphas, the cross edit
def test_reweight_equalizer(tok):
    eq = reweight_equalizer(tok, "a vase of flowers", ["vase"], [2.0])
    expected = torch.ones(77)
    expected[2] = 2.0
    assert torch.equal(eq, expected)
    eq = reweight_equalizer(tok, "a checkered vase", ["checkered", "vase"], [0.5, 3.0])
    assert eq[:6].tolist() == [1, 1, 0.5, 0.5, 3.0, 1]  # bos a chec kered vase eos
    with pytest.raises(ValueError, match="not in the prompt"):
        reweight_equalizer(tok, "a vase", ["cat"], [2.0])
    with pytest.raises(ValueError, match="one factor per word"):
        reweight_equalizer(tok, "a vase of flowers", ["vase", "flowers"], [2.0, 1.0, 3.0])


def test_cross_replace_alpha_float(tok):
    al = cross_replace_alpha(tok, "a tiger sitting", 50, 0.8)
    assert al.shape == (51, 77)
    assert bool((al[:40] == 1).all()) and bool((al[40:] == 0).all())  # int(0.8 * 51) = 40
    al = cross_replace_alpha(tok, "a tiger sitting", 50, (0.2, 0.5))
    assert bool((al[10:25] == 1).all()) and al[:10].sum() == 0 and al[25:].sum() == 0  # int(10.2), int(25.5)


def test_cross_replace_alpha_dict(tok):
    al = cross_replace_alpha(tok, "a tiger sitting next to a mirror", 50, {"default_": 0.8, "tiger": (0.0, 0.4)})
    assert bool((al[:20, 2] == 1).all()) and al[20:, 2].sum() == 0  # int(0.4 * 51) = 20
    assert bool((al[:40, [0, 1, 3, 76]] == 1).all()) and al[40:, [0, 1, 3, 76]].sum() == 0
    al = cross_replace_alpha(tok, "a tiger sitting", 10, {"tiger": 0.5})  # default_ missing -> (0, 1)
    assert bool((al[:, [0, 1, 3]] == 1).all()) and al[:5, 2].sum() == 5 and al[5:, 2].sum() == 0
    with pytest.raises(ValueError, match="'cat'"):
        cross_replace_alpha(tok, "a tiger sitting", 50, {"default_": 0.8, "cat": 0.4})


def test_self_replace_range():
    assert self_replace_range(0.5, 50) == (0, 25)
    assert self_replace_range(0.6, 50) == (0, 30)
    assert self_replace_range((0.2, 0.7), 50) == (10, 35)


def test_edit_cross_replace_and_reweight_only_where_alpha():
    a_src = torch.tensor([[[0.2, 0.5, 0.3]]])
    a_tgt = torch.tensor([[[0.6, 0.1, 0.3]]])
    m = torch.tensor([[1.0, 0, 0], [0, 0, 1], [0, 1, 0]])  # swap columns 1 and 2
    eq = torch.tensor([1.0, 2.0, 1.0])
    alpha = torch.tensor([1.0, 1.0, 0.0])
    out = edit_cross(a_src, a_tgt, alpha, replace=m, equalizer=eq)
    # edit = [0.2, 0.3, 0.5] * [1, 2, 1] = [0.2, 0.6, 0.5]; column 2 keeps the target's own 0.3
    assert torch.allclose(out, torch.tensor([[[0.2, 0.6, 0.3]]]))
    out = edit_cross(a_src, a_tgt, torch.zeros(3), replace=m, equalizer=eq)
    assert torch.equal(out, a_tgt)


def test_edit_cross_refine_and_plain_reweight():
    a_src = torch.tensor([[[0.2, 0.5, 0.3]]])
    a_tgt = torch.tensor([[[0.6, 0.1, 0.3]]])
    refine = (torch.tensor([0, -1, 1]), torch.tensor([1.0, 0.0, 1.0]))
    out = edit_cross(a_src, a_tgt, torch.ones(3), refine=refine)
    assert torch.allclose(out, torch.tensor([[[0.2, 0.1, 0.5]]]))
    out = edit_cross(a_src, a_tgt, torch.ones(3), equalizer=torch.tensor([1.0, 1.0, 2.0]))  # vase-vase style
    assert torch.allclose(out, torch.tensor([[[0.2, 0.5, 0.6]]]))
    with pytest.raises(ValueError):
        edit_cross(a_src, a_tgt, torch.ones(3), replace=torch.eye(3), refine=refine)
