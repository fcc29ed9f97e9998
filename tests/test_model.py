"""Our tokenizer, text encoder, UNet and VAE against transformers/diffusers on the seeded tiny model."""
from __future__ import annotations

import pytest
import torch

from model import AttentionHook, CLIPTokenizer
from model.attention import attention

HARD_TEXTS = [
    "a cat sitting next to a mirror", "don't stop, it's 1234 dogs!!", "Café naïve résumé Ångström",
    "emoji 🐱🔥 ok 👍🏽", "中文 日本語テスト 한국어", "a   b\t\tc\n\nd  ", "UPPER Case MiXeD", "A human-like toy",
    "checkered", "", "x&amp;y <b>tag</b> #hash @at", "ﬁne ½ ① ²", "it'll we've they're I'm he'd",
    "A person, wearing white dress, sitting on the bench, reading a book", "3.14159 and 2,000,000",
    " ".join(["word"] * 100), "supercalifragilisticexpialidocious antidisestablishmentarianism",
]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


@pytest.fixture(scope="module")
def hf(tiny_diffusers_dir):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer as HFTok

    d = tiny_diffusers_dir
    return {
        "tok": HFTok.from_pretrained(d / "tokenizer"),
        "text": CLIPTextModel.from_pretrained(d / "text_encoder").eval(),
        "unet": UNet2DConditionModel.from_pretrained(d / "unet").eval(),
        "vae": AutoencoderKL.from_pretrained(d / "vae").eval(),
    }


@pytest.mark.parametrize("text", HARD_TEXTS)
def test_tokenizer_matches_transformers(hf, text):
    ours = CLIPTokenizer.bundled()([text])[0].tolist()
    theirs = hf["tok"](text, padding="max_length", max_length=77, truncation=True)["input_ids"]
    assert ours == theirs


def test_tokenizer_folder_equals_bundled(tiny_sd):
    ids = [tiny_sd.tokenizer(t)[0].tolist() for t in HARD_TEXTS]
    assert ids == [CLIPTokenizer.bundled()(t)[0].tolist() for t in HARD_TEXTS]


def test_tokenizer_spans_padding_truncation():
    tok = CLIPTokenizer.bundled()
    prompt = "A human-like  toy, checkered"
    enc = tok.encode(prompt)
    assert [prompt[a:b] for a, b in enc.spans] == ["A", "human", "-", "like", "toy", ",", "chec", "kered"]
    assert enc.ids[0] == 49406 and enc.ids[len(enc.spans) + 1] == 49407 and enc.ids[-1] == 49407
    assert len(enc.ids) == 77 and not enc.truncated
    long = tok.encode(" ".join(["word"] * 100))
    assert long.truncated and len(long.ids) == 77 and long.ids[-1] == 49407 and long.ids[-2] == 2653
    assert tok.encode("").ids == [49406] + [49407] * 76


def test_text_encoder_matches(tiny_sd, hf):
    ids = tiny_sd.tokenizer(["a cat sitting next to a mirror", "", "A human-like toy"])
    with torch.no_grad():
        assert rel_err(tiny_sd.text_encoder(ids), hf["text"](ids).last_hidden_state) < 1e-4


@pytest.mark.parametrize("hw,t", [((64, 64), [981]), ((16, 24), [1, 500]), ((24, 16), [999, 20])])
def test_unet_matches(tiny_sd, hf, hw, t):
    g = torch.Generator().manual_seed(1)
    b = len(t)
    x = torch.randn(b, 4, *hw, generator=g)
    ctx = torch.randn(b, 77, 64, generator=g)
    tt = torch.tensor(t)
    with torch.no_grad():
        ref = hf["unet"](x, tt, ctx).sample
        assert rel_err(tiny_sd.unet(x, tt, ctx), ref) < 1e-4
        if b == 1:  # plain int timestep too
            assert rel_err(tiny_sd.unet(x, t[0], ctx), ref) < 1e-4


@pytest.mark.parametrize("hw", [(64, 64), (48, 80)])
def test_vae_matches(tiny_sd, hf, hw):
    img = torch.rand(2, 3, *hw, generator=torch.Generator().manual_seed(2)) * 2 - 1
    with torch.no_grad():
        z = tiny_sd.vae.encode(img)
        assert rel_err(z, hf["vae"].encode(img).latent_dist.mean) < 1e-4
        assert rel_err(tiny_sd.vae.decode(z), hf["vae"].decode(z).sample) < 1e-4
    with pytest.raises(ValueError, match="multiples of 8"):
        tiny_sd.vae.encode(torch.zeros(1, 3, 60, 64))


def test_explicit_attention_equals_fused():
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 50, 64, generator=g) for _ in range(3))
    bias = torch.log((torch.rand(50, generator=g) > 0.3).float())[None, None, None]
    for b in (None, bias):
        fused, explicit = attention(q, k, v, 8, bias=b), attention(q, k, v, 8, bias=b, fused=False)
        assert torch.allclose(fused, explicit, atol=1e-5)
        # hand-written reference for one head
        s = q[:, :, :8] @ k[:, :, :8].transpose(1, 2) / 8 ** 0.5 + (0 if b is None else b[0, 0])
        assert torch.allclose(explicit[:, :, :8], s.softmax(-1) @ v[:, :, :8], atol=1e-5)


def test_unet_explicit_path_equals_fused(tiny_sd):
    x, ctx = torch.randn(1, 4, 16, 16), torch.randn(1, 77, 64)
    with torch.no_grad():
        fused = tiny_sd.unet(x, 10, ctx)
        tiny_sd.unet.set_fused(False)
        try:
            explicit = tiny_sd.unet(x, 10, ctx)
        finally:
            tiny_sd.unet.set_fused(True)
    assert rel_err(explicit, fused) < 1e-5


class Recorder(AttentionHook):
    def __init__(self):
        self.calls = []

    def on_qkv(self, site, step, q, k, v):
        self.calls.append((site.block, site.kind, site.height, site.width, step, q.shape, k.shape))


def test_hook_sees_16_self_and_16_cross_with_sizes(tiny_sd):
    rec = Recorder()
    x, ctx = torch.randn(2, 4, 64, 48), torch.randn(2, 77, 64)
    with torch.no_grad(), tiny_sd.unet.hooked(rec):
        tiny_sd.unet(x, 10, ctx, step=7)
    selfs = [c for c in rec.calls if c[1] == "self"]
    cross = [c for c in rec.calls if c[1] == "cross"]
    assert [c[0] for c in selfs] == list(range(16)) and [c[0] for c in cross] == list(range(16))
    sides = [1, 1, 2, 2, 4, 4, 8, 4, 4, 4, 2, 2, 2, 1, 1, 1]  # §2: 64² 64² 32² 32² 16² 16² 8² 16²x3 32²x3 64²x3
    assert [(c[2], c[3]) for c in selfs] == [(64 // s, 48 // s) for s in sides]
    assert all(c[4] == 7 for c in rec.calls)
    assert all(c[6][1] == 77 for c in cross) and all(c[6][1] == c[5][1] for c in selfs)


def test_block_levels_follow_spec_table(tiny_sd):
    # §2: down 0-5 at 64², 64², 32², 32², 16², 16²; mid 6 at 8²; up 7-9 at 16², 10-12 at 32², 13-15 at 64².
    assert tiny_sd.unet.block_levels() == {0: 0, 1: 0, 2: 1, 3: 1, 4: 2, 5: 2, 6: 3, 7: 2, 8: 2, 9: 2,
                                           10: 1, 11: 1, 12: 1, 13: 0, 14: 0, 15: 0}


class PassThrough(AttentionHook):
    def needs_probs(self, site, step):
        return True


class Scale(AttentionHook):
    def replace_output(self, site, step, q, k, v):
        return attention(q, k, v, site.heads) * 0.5


def test_hooks_pass_through_change_and_remove(tiny_sd):
    unet = tiny_sd.unet
    x, ctx = torch.randn(1, 4, 16, 16), torch.randn(1, 77, 64)
    with torch.no_grad():
        plain = unet(x, 10, ctx)
        unet.set_fused(False)  # pass-through through the probability path equals the explicit path, bit for bit
        try:
            explicit = unet(x, 10, ctx)
            with unet.hooked(PassThrough()):
                assert torch.equal(unet(x, 10, ctx), explicit)
        finally:
            unet.set_fused(True)
        with unet.hooked(AttentionHook()):
            assert torch.equal(unet(x, 10, ctx), plain)
        with unet.hooked(Scale(), blocks=[12], kinds=("self",)):
            changed = unet(x, 10, ctx)
        assert (changed - plain).abs().max() > 1e-4
        assert torch.equal(unet(x, 10, ctx), plain)  # removed: the plain model again
        assert all(layer.hook is None for layer in unet.attention_layers().values())
