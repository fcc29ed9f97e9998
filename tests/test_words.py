"""§4.2: word -> token positions agree with the reference's get_word_inds on the presets."""
from __future__ import annotations

import json

import pytest
import torch

from model.tokenizer import BUNDLED_VOCAB, CLIPTokenizer, _vocab_from_bpe_file
from specref.words import word_token_indices, word_vector, words_of

# §6 presets: (source, target, words of the source, words of the target)
PRESETS = {
    "mirror-tiger": ("a cat sitting next to a mirror", "a tiger sitting next to a mirror", ["cat"], ["tiger"]),
    "mirror-dog13": ("a cat sitting next to a mirror", "a dog sitting next to a mirror", ["cat"], ["dog"]),
    "dogshirt-bed": ("two dogs standing on a board, lake behind", "two dogs standing on a mattress, in the bedroom",
                     ["board", "lake"], ["mattress", "bedroom"]),
    "dogshirt-shirt": ("two dogs wearing red clothes", "two dogs wearing blue clothes", ["red", "clothes"], ["blue"]),
    "human6-dress": ("A person, wearing white dress, sitting on the bench, reading a book",
                     "A person, wearing colorful plaid dress, sitting on the bench, reading a book",
                     ["white", "dress"], ["colorful", "plaid", "dress"]),
    "toy_rabbit-cake": ("A human-like toy is sitting on a cushion", "A human-like toy is sitting on a birthday cake",
                        ["cushion", "toy"], ["cake", "toy"]),
    "vase-vase": ("a vase of flowers", "a vase of flowers", ["vase"], ["vase"]),
    "vase-zhi": ("a vase of carnation", "a vase of flowers", ["carnation"], ["flowers"]),
}


@pytest.fixture(scope="module")
def tok() -> CLIPTokenizer:
    return CLIPTokenizer.bundled()


@pytest.fixture(scope="module")
def hf_tok(tmp_path_factory):
    """transformers' CLIPTokenizer on the same vocabulary (its decode strips '</w>' like the reference's)."""
    transformers = pytest.importorskip("transformers")
    vocab, merges = _vocab_from_bpe_file(BUNDLED_VOCAB)
    d = tmp_path_factory.mktemp("hf_tok")
    (d / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (d / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n", encoding="utf-8")
    return transformers.CLIPTokenizer(str(d / "vocab.json"), str(d / "merges.txt"))


def reference_word_inds(text: str, word: str, hf_tok, ignore_case: bool = False) -> list[int]:
    """P2P's get_word_inds as in the SpecRef copy: split after ',' '.' -> ' ', walk decoded token lengths."""
    split_text = text.replace(",", " ").replace(".", " ").split(" ")
    fold = str.lower if ignore_case else str
    places = [i for i, w in enumerate(split_text) if fold(w) == fold(word)]
    out = []
    words_encode = [hf_tok.decode([item]).strip("#") for item in hf_tok.encode(text)][1:-1]
    cur_len, ptr = 0, 0
    for i in range(len(words_encode)):
        cur_len += len(words_encode[i])
        if ptr in places:
            out.append(i + 1)
        if cur_len >= len(split_text[ptr]):
            ptr += 1
            cur_len = 0
    return out


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_agree_with_reference(tok, hf_tok, name):
    src, tgt, src_words, tgt_words = PRESETS[name]
    for prompt, words in ((src, src_words), (tgt, tgt_words)):
        assert hf_tok.encode(prompt) == tok.encode(prompt).ids[: len(tok.encode(prompt).spans) + 2]
        for word in words:
            ours = word_token_indices(tok, prompt, word)
            assert ours, (prompt, word)
            assert ours == reference_word_inds(prompt, word, hf_tok), (prompt, word)


def test_every_word_of_presets_agrees(tok, hf_tok):
    for src, tgt, _, _ in PRESETS.values():
        for prompt in (src, tgt):
            for word in set(words_of(prompt)):  # ours is case-insensitive ("A" and "a"), the reference is not
                assert word_token_indices(tok, prompt, word) == reference_word_inds(prompt, word, hf_tok, True)


def test_known_positions(tok):
    p = "A human-like toy is sitting on a checkered cushion."
    # 0 bos, 1 a, 2 human, 3 -, 4 like, 5 toy, 6 is, 7 sitting, 8 on, 9 a, 10 chec, 11 kered, 12 cushion, 13 .
    assert word_token_indices(tok, p, "human-like") == [2, 3, 4]
    assert word_token_indices(tok, p, "checkered") == [10, 11]
    assert word_token_indices(tok, p, "cushion") == [12]  # '.' is not part of the word
    assert word_token_indices(tok, p, "a") == [1, 9]  # every occurrence
    assert word_token_indices(tok, p, "TOY") == [5]  # case-insensitive


def test_punctuation_and_spacing(tok):
    p = "two dogs  on a Board,lake. behind"
    enc = tok.encode(p)
    assert word_token_indices(tok, p, "board") == [5]
    assert word_token_indices(tok, p, "lake") == [7]
    assert word_token_indices(tok, p, "behind") == [9]
    assert [p[s:e] for s, e in enc.spans] == ["two", "dogs", "on", "a", "Board", ",", "lake", ".", "behind"]
    assert words_of(p) == ["two", "dogs", "on", "a", "Board", "lake", "behind"]


def test_whole_word_only(tok):
    with pytest.raises(ValueError, match="'human'.*A human-like toy"):
        word_token_indices(tok, "A human-like toy", "human")
    with pytest.raises(ValueError, match="not in the prompt"):
        word_token_indices(tok, "a cat", "cats")
    with pytest.raises(ValueError, match="single word"):
        word_token_indices(tok, "a birthday cake", "birthday cake")


def test_truncated_word(tok):
    p = "a dog " + " ".join(["cat"] * 80) + " checkered"
    with pytest.raises(ValueError, match="77-token limit"):
        word_token_indices(tok, p, "checkered")
    with pytest.raises(ValueError, match="77-token limit"):  # some occurrences are cut off
        word_token_indices(tok, p, "cat")
    assert word_token_indices(tok, p, "dog") == [2]
    p = " ".join(["cat"] * 74) + " checkered"  # 'chec' is token 75, 'kered' is cut
    with pytest.raises(ValueError, match="77-token limit"):
        word_token_indices(tok, p, "checkered")


def test_word_vector(tok):
    v = word_vector(tok, "a checkered cat", ["checkered", "cat"])
    expected = torch.zeros(77)
    expected[[2, 3, 4]] = 1
    assert torch.equal(v, expected)
