"""Editor properties on the seeded tiny model (docs/spec.md §3-§4) and its bad-input errors."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

import specref
from specref import EditConfig
from specref.masks import EmptyMaskError

N = 6
rng = np.random.default_rng(0)
SRC = Image.fromarray(rng.integers(0, 255, (128, 128, 3), dtype=np.uint8))
REF = Image.fromarray(rng.integers(0, 255, (96, 96, 3), dtype=np.uint8))
MASK = np.zeros((96, 96), bool)
MASK[24:72, 24:72] = True
CFG = EditConfig(source_prompt="a cat sitting next to a mirror", target_prompt="a tiger sitting next to a mirror",
                 mode="replace", self_replace_steps=0.5, blend_words=(("cat",), ("tiger",)), target_words=("tiger",),
                 thres=0.3, sr_steps=(1, N), sr_layers=(10, 16), steps=N, size=128, start_blend=0.2)


def run(sd, cfg=CFG, reference=REF, mask=MASK, **kw):
    return specref.edit(sd, SRC, reference, cfg, reference_mask_file=None if mask is None else Image.fromarray(mask),
                        progress=False, **kw)


class RecordingUNet(torch.nn.Module):
    """Wraps the UNet to record the latents of each call (the test's view, not the library's)."""

    def __init__(self, unet):
        super().__init__()
        self.inner, self.calls, self.conv_in = unet, [], unet.conv_in  # conv_in: sd.device/dtype read it
        self.config = unet.config  # sd.native_size reads it

    def forward(self, x, t, ctx, step=None):
        self.calls.append((step, x.detach().clone()))
        return self.inner(x, t, ctx, step=step)

    def hooked(self, *a, **k):
        return self.inner.hooked(*a, **k)

    def block_levels(self):
        return self.inner.block_levels()


@pytest.fixture(scope="module")
def result(tiny_sd):
    return run(tiny_sd)


def test_reconstruction_path_follows_inverted_trajectory(tiny_sd):
    rec = RecordingUNet(tiny_sd.unet)
    r = run(dataclasses.replace(tiny_sd, unet=rec))
    z = r.latents["source_inverted"]
    assert z.shape == (N + 1, 4, 16, 16)
    edit_calls = [x for step, x in rec.calls if x.shape[0] == 4]
    assert len(edit_calls) == N
    for i, x in enumerate(edit_calls):
        # batch [x_src, x_tgt, x_src, x_tgt]; x_src is z_src[N - i] exactly, before the UNet call
        assert torch.equal(x[0], z[N - i]) and torch.equal(x[2], z[N - i])
    assert torch.equal(edit_calls[0][1], z[N])  # the target starts from the inverted noise too
    # z[0] is the scaled VAE posterior mean of the working-size source
    img = specref.images.to_tensor(SRC, (128, 128))
    with torch.no_grad():
        assert torch.allclose(z[0], tiny_sd.vae.encode(img)[0] * tiny_sd.scaling_factor, atol=1e-5)


def test_no_reference_is_the_p2p_baseline(tiny_sd):
    base = run(tiny_sd, reference=None, mask=None)
    off = run(tiny_sd, CFG.replace(use_reference=False))
    assert base.mask_t is None and base.feature_bytes == 0
    assert torch.equal(base.latents["edit_latent"], off.latents["edit_latent"])
    # SR-attn only from the last step: everything up to it is the baseline (batch of 2 in inversion: tolerance)
    late = run(tiny_sd, CFG.replace(sr_steps=(N - 1, N)))
    assert torch.allclose(late.latents["source_inverted"], base.latents["source_inverted"], atol=1e-4)
    assert not torch.allclose(late.latents["edit_latent"], base.latents["edit_latent"], atol=1e-3)


def test_sr_changes_only_the_target(tiny_sd, result):
    base = run(tiny_sd, reference=None, mask=None)
    assert torch.allclose(result.latents["reconstruction_latent"], base.latents["reconstruction_latent"], atol=1e-4)
    assert (result.latents["edit_latent"] - base.latents["edit_latent"]).abs().max() > 1e-3
    assert result.mask_t is not None and result.mask_t.shape == (16, 16) and result.mask_t.dtype == torch.bool
    assert result.mask_s.shape == (128, 128) and result.mask_s.any()
    assert result.edit.size == SRC.size and result.reconstruction.size == SRC.size


def test_mask_modes(tiny_sd, result):
    none = run(tiny_sd, CFG.replace(masks="none"))
    s_only = run(tiny_sd, CFG.replace(masks="s"))
    full = np.ones_like(MASK)
    # "none" = mask_s all ones and mask_t all ones: "s" with a full reference mask and thres reached everywhere
    s_full = run(tiny_sd, CFG.replace(masks="s"), mask=full)
    assert torch.allclose(none.latents["edit_latent"], s_full.latents["edit_latent"], atol=1e-5)
    assert none.mask_t is None and s_only.mask_t is None
    assert not torch.allclose(s_only.latents["edit_latent"], result.latents["edit_latent"], atol=1e-4)


def test_mask_t_output_when_no_sr_layer_has_the_latent_size(tiny_sd):
    r = run(tiny_sd, CFG.replace(sr_layers=(10, 13)))  # SR-attn only in the latent/2 layers (8² here)
    assert r.mask_t is not None and tuple(r.mask_t.shape) == tuple(r.latents["edit_latent"].shape[-2:])


def test_feature_store_is_only_what_is_used(tiny_sd):
    r = run(tiny_sd, CFG.replace(sr_layers=(13, 16), sr_steps=(3, 5), feature_dtype="float16"))
    # 3 layers x 2 steps x (K and V) of [1, 16*16, 32 channels] in fp16
    assert r.feature_bytes == 3 * 2 * 2 * 256 * 32 * 2


@pytest.mark.parametrize("change,match", [
    (dict(target_words=("lion",)), "word 'lion' is not in the prompt"),
    (dict(blend_words=(("dog",), ("tiger",))), "word 'dog' is not in the prompt"),
    (dict(target_prompt="a tiger sitting next to the big mirror"), "same number of space-separated words"),
    (dict(sr_steps=(2, N + 1)), "--sr-steps 2-7 end after the last of 6 steps"),
    (dict(sr_layers=(10, 17)), "--sr-layers 10-17 is out of bounds"),
    (dict(steps=0), "--steps must be 1 to 999"),
    (dict(masks="t", target_words=()), "mask_t needs target words"),
    (dict(map_blocks=(4, 10)), "maps of different sizes"),
    (dict(map_blocks=(16,)), "--map-blocks must be cross-attention block indices"),
    (dict(map_blocks=()), "--map-blocks must be block indices"),
    (dict(map_blocks=(10, 11, 12), sr_steps=(0, N)), "mask_t at SR step 0 needs a map"),
])
def test_bad_settings_fail_before_work(tiny_sd, change, match):
    with pytest.raises(ValueError, match=match):
        run(tiny_sd, CFG.replace(**change))


def test_bad_inputs(tiny_sd, tmp_path):
    with pytest.raises(ValueError, match="mask .* is empty"):
        run(tiny_sd, mask=np.zeros_like(MASK))
    with pytest.raises(ValueError, match="must be the same size"):
        run(tiny_sd, mask=np.ones((40, 60), bool))
    small = np.zeros((48, 48), bool)  # same picture at half the resolution: resized, same result
    small[12:36, 12:36] = True
    assert torch.equal(run(tiny_sd, mask=small).latents["edit_latent"], run(tiny_sd).latents["edit_latent"])
    tiny = np.zeros_like(MASK)
    tiny[0, 0] = True  # one pixel of 96²: nothing left at the 8² layers after thresholding
    with pytest.raises(EmptyMaskError, match="mask_s is empty at layer size"):
        run(tiny_sd, mask=tiny)
    (tmp_path / "notimage.png").write_text("hello")
    with pytest.raises(ValueError, match="not a readable image"):
        specref.edit(tiny_sd, tmp_path / "notimage.png", REF, CFG, progress=False)
    with pytest.raises(ValueError, match="does not exist"):
        specref.edit(tiny_sd, tmp_path / "missing.png", REF, CFG, progress=False)
    with pytest.warns(UserWarning, match="truncated"):
        long = "a tiger " + " ".join(["very"] * 80)
        run(tiny_sd, CFG.replace(target_prompt=long, source_prompt=long, mode="refine", blend_words=None))


def test_constant_mask_t_is_a_clear_error(tiny_sd):
    from specref.masks import mask_t_from_maps

    with pytest.raises(ValueError, match="mask_t map is constant"):
        mask_t_from_maps(torch.ones(4, 4, 77), [2], (8, 8), "bilinear", 0.5)


def test_presets_resolve_on_their_prompts(tiny_sd):
    from specref.inputs import check_model, model_defaults
    from specref.p2p import p2p_plan
    from specref.settings import complete, validate

    assert len(specref.PRESETS) == 8
    for name, preset in specref.PRESETS.items():
        cfg, _ = complete(preset.config(), model_defaults(tiny_sd))
        validate(cfg)
        check_model(cfg, tiny_sd)
        plan = p2p_plan(cfg, tiny_sd.tokenizer)
        assert plan.blend_words is not None and plan.blend_words.sum() > 0, name
    assert specref.PRESETS["vase-zhi"].config(steps=10).sr_steps == (9, 10)


def test_bfloat16_edit_is_finite(tiny_diffusers_dir):
    import weights

    sd = weights.load_model(tiny_diffusers_dir, dtype=torch.bfloat16)
    r = run(sd, CFG.replace(steps=3, sr_steps=(1, 3), size=64))  # small: bf16 is slow without native support
    assert all(bool(torch.isfinite(v).all()) for v in r.latents.values())
    assert r.latents["edit_latent"].dtype == torch.float32  # latents and the DDIM update stay fp32
    assert r.mask_t is not None and r.mask_t.any()
