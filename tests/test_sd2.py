"""Stable Diffusion 2.x (§9) on seeded tiny SD 2 models, against diffusers/transformers and written-out math.

Folders (2.x-v: v-prediction, upcast attention, its own sample size; 2.x-base: epsilon), LDM single files (the
released OpenCLIP layout with its unused last layer, or diffusers' 23-layer convention; with or without a yaml),
Hub ids from an offline cache, refusals, the "!" padding, upcast attention, and v-prediction DDIM step for step.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

import sampling
import weights
from model import CLIPTokenizer
from model.attention import Attention
from weights import StrictLoadError, UnsupportedCheckpoint
from weights.ldm_yaml import parse_yaml

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

OPENCLIP = "cond_stage_model.model."
SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                clip_sample=False, set_alpha_to_one=True, steps_offset=1)  # §2's DDIM settings
TEXTS = [
    "a cat sitting next to a mirror", "don't stop, it's 1234 dogs??", "Café naïve résumé Ångström",
    "emoji 🐱🔥 ok 👍🏽", "中文 日本語テスト 한국어", "3.14159 and 2,000,000", "", "x&amp;y <b>tag</b> #hash @at",
    " ".join(["word"] * 100), "a, b; c: d - e (f) [g] {h} 'i' \"j\"", "ﬁne ½ ① ²",
]
# Stability AI's released SD 2 inference configs, as published (v2-inference.yaml is this without parameterization)
V2_INFERENCE_V = """model:
  base_learning_rate: 1.0e-4
  target: ldm.models.diffusion.ddpm.LatentDiffusion
  params:
    parameterization: "v"
    linear_start: 0.00085
    linear_end: 0.0120
    num_timesteps_cond: 1
    log_every_t: 200
    timesteps: 1000
    first_stage_key: "jpg"
    cond_stage_key: "txt"
    image_size: 64
    channels: 4
    cond_stage_trainable: false
    conditioning_key: crossattn
    monitor: val/loss_simple_ema
    scale_factor: 0.18215
    use_ema: False # we set this to false because this is an inference only config

    unet_config:
      target: ldm.modules.diffusionmodules.openaimodel.UNetModel
      params:
        use_checkpoint: True
        use_fp16: True
        image_size: 32 # unused
        in_channels: 4
        out_channels: 4
        model_channels: 320
        attention_resolutions: [ 4, 2, 1 ]
        num_res_blocks: 2
        channel_mult: [ 1, 2, 4, 4 ]
        num_head_channels: 64 # need to fix for flash-attn
        use_spatial_transformer: True
        use_linear_in_transformer: True
        transformer_depth: 1
        context_dim: 1024
        legacy: False

    first_stage_config:
      target: ldm.models.autoencoder.AutoencoderKL
      params:
        embed_dim: 4
        monitor: val/rec_loss
        ddconfig:
          #attn_type: "vanilla-xformers"
          double_z: true
          z_channels: 4
          resolution: 256
          in_channels: 3
          out_ch: 3
          ch: 128
          ch_mult:
          - 1
          - 2
          - 4
          - 4
          num_res_blocks: 2
          attn_resolutions: []
          dropout: 0.0
        lossconfig:
          target: torch.nn.Identity

    cond_stage_config:
      target: ldm.modules.encoders.modules.FrozenOpenCLIPEmbedder
      params:
        freeze: True
        layer: "penultimate"
"""
V2_INFERENCE = V2_INFERENCE_V.replace('    parameterization: "v"\n', "")
# "a cat sitting next to a mirror" and "" padded with "!" (0): the text-encoder input of `parts`
IDS = torch.tensor([[49406, 320, 2368, 4919, 1131, 531, 320, 7220, 49407] + [0] * 68, [49406, 49407] + [0] * 75])


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b|."""
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


# ---- fixtures: the tiny SD 2 models, built once per module --------------------------------------------------------
@pytest.fixture(scope="module")
def sd2_dirs(tmp_path_factory) -> dict[str, Path]:
    from tiny import make_tiny_sd2

    root = tmp_path_factory.mktemp("sd2")
    v = make_tiny_sd2(root / "v", "v")
    return {"v": v, "base": make_tiny_sd2(root / "base", "base", like=v)}


@pytest.fixture(scope="module")
def sd2(sd2_dirs):
    return {k: weights.load_model(d) for k, d in sd2_dirs.items()}


@pytest.fixture(scope="module")
def bundled() -> dict[str, CLIPTokenizer]:
    """The bundled vocabulary padded as SD 1 (<|endoftext|>) and as an SD 2 single file ("!")."""
    return {"sd1": CLIPTokenizer.bundled(), "sd2": CLIPTokenizer.bundled(pad_token="!")}


@pytest.fixture(scope="module")
def folder_parts(sd2) -> list[torch.Tensor]:
    """parts() of the v model loaded from its folder: what every other way of loading it must give."""
    return parts(sd2["v"])


@pytest.fixture(scope="module")
def hf(sd2_dirs):
    """The independent parts: transformers tokenizer and text encoder, diffusers UNet and VAE (of the v folder)."""
    d = sd2_dirs["v"]
    return {
        "tok": transformers.CLIPTokenizer.from_pretrained(d / "tokenizer"),
        "text": transformers.CLIPTextModel.from_pretrained(d / "text_encoder").eval(),
        "unet": diffusers.UNet2DConditionModel.from_pretrained(d / "unet").eval(),
        "vae": diffusers.AutoencoderKL.from_pretrained(d / "vae").eval(),
    }


@pytest.fixture(scope="module")
def ldm_files(sd2_dirs, tmp_path_factory) -> dict[str, Path]:
    """The v model as LDM single files: "whole" as released (24-layer-like tower: one unused last layer,
    text_projection, logit_scale; .safetensors), "23" as written from diffusers (.ckpt with a global_step)."""
    from tiny import to_ldm_state

    root = tmp_path_factory.mktemp("sd2-ldm")
    whole = {k: v.contiguous() for k, v in to_ldm_state(sd2_dirs["v"]).items()}
    save_file(whole, root / "whole.safetensors")
    (root / "23").mkdir()
    torch.save({"state_dict": to_ldm_state(sd2_dirs["v"], whole_tower=False), "global_step": 110000},
               root / "23" / "sd2.ckpt")
    return {"whole": root / "whole.safetensors", "23": root / "23" / "sd2.ckpt"}


def openclip_text(state: dict[str, torch.Tensor], ids: torch.Tensor, penultimate: bool) -> torch.Tensor:
    """open_clip's text tower written out (nn.MultiheadAttention on the stacked in_proj, GELU MLP, causal mask),
    stopped before the last layer when `penultimate` (SD 2's FrozenOpenCLIPEmbedder, layer "penultimate"),
    then ln_final."""
    p = OPENCLIP
    width = state[p + "ln_final.weight"].shape[0]
    x = state[p + "token_embedding.weight"][ids] + state[p + "positional_embedding"]
    n = ids.shape[1]
    mask = torch.full((n, n), float("-inf")).triu(1)
    layers = sorted({int(k.split(".")[4]) for k in state if k.startswith(p + "transformer.resblocks.")})
    for i in layers[:-1] if penultimate else layers:
        r = f"{p}transformer.resblocks.{i}."
        mha = torch.nn.MultiheadAttention(width, width // 64, batch_first=True)
        mha.load_state_dict({"in_proj_weight": state[r + "attn.in_proj_weight"],
                             "in_proj_bias": state[r + "attn.in_proj_bias"],
                             "out_proj.weight": state[r + "attn.out_proj.weight"],
                             "out_proj.bias": state[r + "attn.out_proj.bias"]})
        h = F.layer_norm(x, (width,), state[r + "ln_1.weight"], state[r + "ln_1.bias"])
        x = x + mha(h, h, h, attn_mask=mask, need_weights=False)[0]
        h = F.layer_norm(x, (width,), state[r + "ln_2.weight"], state[r + "ln_2.bias"])
        h = F.gelu(F.linear(h, state[r + "mlp.c_fc.weight"], state[r + "mlp.c_fc.bias"]))
        x = x + F.linear(h, state[r + "mlp.c_proj.weight"], state[r + "mlp.c_proj.bias"])
    return F.layer_norm(x, (width,), state[p + "ln_final.weight"], state[p + "ln_final.bias"])


def parts(sd, ids: torch.Tensor | None = None) -> list[torch.Tensor]:
    """Text encoder (on `ids`, default IDS), UNet (two timesteps, non-square) and VAE outputs on fixed inputs."""
    ids = IDS if ids is None else ids
    g = torch.Generator().manual_seed(4)
    x, img = torch.randn(2, 4, 8, 16, generator=g), torch.rand(1, 3, 64, 64, generator=g) * 2 - 1
    ctx = torch.randn(2, 77, 128, generator=g)
    with torch.no_grad():
        z = sd.vae.encode(img)
        return [sd.text_encoder(ids), sd.unet(x, torch.tensor([1, 981]), ctx), z, sd.vae.decode(z)]


# ---- §9.2 tokenizer --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text", TEXTS)
def test_tokenizer_pads_with_exclamation_like_transformers(sd2, hf, bundled, text):
    theirs = hf["tok"](text, padding="max_length", max_length=77, truncation=True)["input_ids"]
    assert sd2["v"].tokenizer([text])[0].tolist() == theirs
    assert bundled["sd2"]([text])[0].tolist() == theirs  # what an SD 2 single file uses
    enc, sd1 = sd2["v"].tokenizer.encode(text), bundled["sd1"].encode(text)
    assert (enc.spans, enc.truncated) == (sd1.spans, sd1.truncated)  # only the padding differs
    n = len(enc.spans) + 2
    assert enc.ids[:n] == sd1.ids[:n] and enc.ids[n:] == [0] * (77 - n) and sd1.ids[n:] == [49407] * (77 - n)


def test_exclamation_marks_in_a_prompt_are_text_as_in_open_clip(sd2, hf, bundled):
    # open_clip.tokenize (what SD 2 was trained with) reads "! !! !!!" as 256, 748, 995 and pads with 0;
    # transformers' CLIPTokenizer splits its pad token "!" out of the text as a special token, so it gives 0 0 0 0 0 0.
    prompt = "! !! !!!"
    assert sd2["v"].tokenizer([prompt])[0].tolist() == [49406, 256, 748, 995, 49407] + [0] * 72
    assert hf["tok"](prompt)["input_ids"] == [49406] + [0] * 6 + [49407]
    enc = sd2["v"].tokenizer.encode("wow, stop!! now")
    assert enc.ids[:7] == bundled["sd1"].encode("wow, stop!! now").ids[:7] and enc.ids[7:] == [0] * 70


def test_pad_token_read_from_the_tokenizer_folder(sd2_dirs, tmp_path):
    tok = tmp_path / "tok"
    shutil.copytree(sd2_dirs["v"] / "tokenizer", tok)
    cfg = json.loads((tok / "tokenizer_config.json").read_text())
    (tok / "tokenizer_config.json").write_text(json.dumps(cfg | {"pad_token": {"content": "!", "lstrip": False}}))
    assert CLIPTokenizer.from_folder(tok).pad_id == 0
    (tok / "tokenizer_config.json").write_text(json.dumps({k: v for k, v in cfg.items() if k != "pad_token"}))
    assert CLIPTokenizer.from_folder(tok).pad_id == 0  # from special_tokens_map.json
    (tok / "special_tokens_map.json").unlink()
    assert CLIPTokenizer.from_folder(tok).pad_id == 49407  # neither names one: SD 1's <|endoftext|>


# ---- folders: §9.1 text encoder, §9.3 UNet, VAE, fields --------------------------------------------------------------
def test_folder_fields(sd2, tiny_sd):
    v, base = sd2["v"], sd2["base"]
    assert (v.family, v.prediction_type, v.native_size) == ("sd2", "v_prediction", 128)  # sample_size 16 x 8
    assert (base.family, base.prediction_type, base.native_size) == ("sd2", "epsilon", 64)
    assert v.unet.config.heads == (1, 1, 2, 2) and v.unet.config.cross_attention_dim == 128  # per-level head counts
    assert v.unet.config.use_linear_projection and v.text_encoder.config.hidden_act == "gelu"
    assert all(a.upcast for a in v.unet.attention_layers().values())
    assert not any(a.upcast for a in base.unet.attention_layers().values())
    assert (tiny_sd.family, tiny_sd.prediction_type, tiny_sd.native_size) == ("sd1", "epsilon", 512)
    assert tiny_sd.tokenizer.pad_id == 49407 and tiny_sd.extra == {}


def test_text_encoder_unet_vae_match_diffusers(sd2, hf, folder_parts):
    # the base folder holds the same weights as the v folder (other configs): one comparison covers both networks
    ids = sd2["v"].tokenizer([" ".join(["word"] * 100)])  # truncated at 77, no padding
    g = torch.Generator().manual_seed(4)
    x, img = torch.randn(2, 4, 8, 16, generator=g), torch.rand(1, 3, 64, 64, generator=g) * 2 - 1
    ctx = torch.randn(2, 77, 128, generator=g)
    with torch.no_grad():
        assert rel(sd2["v"].text_encoder(ids), hf["text"](ids).last_hidden_state) < 1e-4
        z = hf["vae"].encode(img).latent_dist.mean
        theirs = [hf["text"](IDS).last_hidden_state, hf["unet"](x, torch.tensor([1, 981]), ctx).sample, z,
                  hf["vae"].decode(folder_parts[2]).sample]
    assert all(rel(a, b) < 1e-4 for a, b in zip(folder_parts, theirs))
    assert sd2["v"].tokenizer(["a cat sitting next to a mirror", ""]).tolist() == IDS.tolist()


# ---- §9.3 upcast attention ------------------------------------------------------------------------------------------
def _attention_pair(dtype: torch.dtype, upcast: bool, fused: bool) -> tuple[Attention, Attention]:
    """A float32 reference layer and the same weights in `dtype` (q and k projections equal: large scores)."""
    g = torch.Generator().manual_seed(0)
    ref = Attention(64, 1)
    with torch.no_grad():
        w = torch.randn(64, 64, generator=g) / 8
        ref.to_q.weight.copy_(w)
        ref.to_k.weight.copy_(w)
        ref.to_v.weight.copy_(torch.randn(64, 64, generator=g) / 8)
        ref.to_out[0].weight.copy_(torch.randn(64, 64, generator=g) / 8)
        ref.to_out[0].bias.copy_(torch.randn(64, generator=g) / 8)
    ref = ref.to(dtype).float()  # weights exactly representable in dtype
    low = Attention(64, 1, upcast=upcast).to(dtype)
    low.load_state_dict(ref.state_dict())
    low.fused = fused
    return ref, low


@pytest.mark.parametrize("dtype, scale", [(torch.float16, 100.0), (torch.bfloat16, 1.0)])
def test_upcast_attention_is_closer_to_float32(dtype, scale):
    # float16 at scale 100: scores ~8e4 overflow float16's 65504; bfloat16 at scale 1: its 8-bit scores lose
    # precision. Without upcast on the explicit path (no float32 accumulation inside the kernel); with upcast on both.
    x = torch.randn(2, 256, 64, generator=torch.Generator().manual_seed(1)) * scale
    x = x.to(dtype)

    def err(upcast: bool, fused: bool) -> float:
        ref, low = _attention_pair(dtype, upcast, fused)
        with torch.no_grad():
            out = low(x, (16, 16))
            assert out.dtype == dtype
            r = ref(x.float(), (16, 16))
            return float((out.float() - r).norm() / r.norm())

    plain = err(False, False)
    for fused in (False, True):
        up = err(True, fused)
        assert up < 5e-3 and not up * 1.1 > plain  # NaN (overflow) compares False: use `not >`
    if dtype == torch.float16:
        assert plain != plain  # overflow without upcast: NaN


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_upcast_is_a_no_op_in_float32_and_float64(dtype):
    x = torch.randn(1, 64, 64, generator=torch.Generator().manual_seed(2), dtype=dtype)
    _, off = _attention_pair(torch.float32, False, True)
    _, on = _attention_pair(torch.float32, True, True)
    off, on = off.to(dtype), on.to(dtype)
    with torch.no_grad():
        assert torch.equal(off(x, (8, 8)), on(x, (8, 8)))


# ---- §9.4 v-prediction DDIM ------------------------------------------------------------------------------------------
def _schedulers(n: int, prediction_type: str, dtype: torch.dtype):
    """diffusers' DDIM and DDIM inverse schedulers; in float64 their alphas (the float32 schedule's values, §2)
    are held in float64, so the update's arithmetic is float64 as ours is."""
    fwd = diffusers.DDIMScheduler(**SCHEDULE, prediction_type=prediction_type)
    inv = diffusers.DDIMInverseScheduler(**SCHEDULE, prediction_type=prediction_type)
    fwd.set_timesteps(n)
    inv.set_timesteps(n)
    fwd.alphas_cumprod, fwd.final_alpha_cumprod = fwd.alphas_cumprod.to(dtype), fwd.final_alpha_cumprod.to(dtype)
    inv.alphas_cumprod, inv.initial_alpha_cumprod = inv.alphas_cumprod.to(dtype), inv.initial_alpha_cumprod.to(dtype)
    return fwd, inv


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-4), (torch.float64, 1e-10)])
@pytest.mark.parametrize("n", [1, 10, 50])
def test_v_ddim_step_and_invert_step_match_diffusers(dtype, tol, n):
    ours = sampling.DDIM(n, prediction_type="v_prediction")
    fwd, inv = _schedulers(n, "v_prediction", dtype)
    assert torch.equal(ours.timesteps, fwd.timesteps) and torch.equal(ours.timesteps.flip(0), inv.timesteps)
    g = torch.Generator().manual_seed(n)
    x, v = torch.randn(2, 4, 8, 8, generator=g, dtype=dtype), torch.randn(2, 4, 8, 8, generator=g, dtype=dtype)
    for t in ours.timesteps.tolist():
        step = fwd.step(v, t, x, eta=0.0)
        out = ours.step(v, t, x)
        assert out.dtype == dtype and rel(out, step.prev_sample) < tol
        assert rel(ours.predict_x0(x, v, ours.alpha_bar(t)), step.pred_original_sample) < tol
        assert rel(ours.invert_step(v, t, x), inv.step(v, t, x).prev_sample) < tol


def test_epsilon_ddim_unchanged_bit_for_bit():
    ddim, explicit = sampling.DDIM(10), sampling.DDIM(10, prediction_type="epsilon")
    g = torch.Generator().manual_seed(3)
    x, eps = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 4, 8, 8, generator=g)
    for t in ddim.timesteps.tolist():
        a, b = ddim.alpha_bar(t), ddim.alpha_bar(t - 100)
        spec = b**0.5 * ((x - (1 - a) ** 0.5 * eps) / a**0.5) + (1 - b) ** 0.5 * eps  # §2, as written before
        assert torch.equal(ddim.step(eps, t, x), spec) and torch.equal(explicit.step(eps, t, x), spec)
    assert ddim.prediction_type == "epsilon" and "prediction_type='epsilon'" in repr(ddim)


def test_ddim_for_and_a_mismatched_ddim(sd2, tiny_sd):
    assert sampling.ddim_for(sd2["v"], 7).prediction_type == "v_prediction"
    assert sampling.ddim_for(sd2["v"]).num_steps == 50
    assert sampling.ddim_for(sd2["base"], 7).prediction_type == "epsilon"
    assert sampling.ddim_for(tiny_sd, 7).prediction_type == "epsilon"
    with pytest.raises(ValueError, match="the model predicts 'v_prediction'.*ddim_for"):
        sampling.sample(sd2["v"], "x", steps=2, height=64, width=64, ddim=sampling.DDIM(2), progress=False)
    with pytest.raises(ValueError, match="the model predicts 'epsilon'"):
        sampling.invert(tiny_sd, torch.zeros(1, 4, 8, 8), ["x"], progress=False,
                        ddim=sampling.DDIM(2, prediction_type="v_prediction"))


@pytest.fixture(scope="module")
def sd2_v64(sd2_dirs):
    return weights.load_model(sd2_dirs["v"], dtype=torch.float64)


class Recorder(torch.nn.Module):
    """Wraps our UNet: keeps every call's input latents and output."""

    def __init__(self, unet):
        super().__init__()
        self.inner, self.conv_in, self.calls = unet, unet.conv_in, []  # sd.device / sd.dtype read conv_in

    def forward(self, x, t, context, step=None):
        out = self.inner(x, t, context, step=step)
        self.calls.append((x.clone(), out))
        return out


@torch.no_grad()
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-4), (torch.float64, 1e-10)])
def test_v_sample_and_invert_match_diffusers_loops(sd2, sd2_v64, hf, dtype, tol):
    # float32: the loops are diffusers' (its UNet, transformers' text encoder and tokenizer, its schedulers): all
    # independent. float64: diffusers' schedulers step on our model's recorded outputs (diffusers computes its UNet's
    # timestep features in float32 whatever the dtype, which alone parts the two UNets by ~1e-7) and each step's
    # input must be the latents our loop gave our model: the loops and the DDIM updates, step for step.
    sd = sd2["v"] if dtype == torch.float32 else sd2_v64
    rec = Recorder(sd.unet)
    sd = dataclasses.replace(sd, unet=rec)
    steps, guidance, prompt = 3, 7.5, "a photo of a cat"
    fwd, inv = _schedulers(steps, "v_prediction", dtype)
    ids = hf["tok"](["", prompt], padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    ctx = hf["text"](ids.input_ids).last_hidden_state

    def model(i: int, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        if dtype == torch.float32:
            return hf["unet"](x, t, encoder_hidden_states=c).sample
        assert rel(rec.calls[i][0], x) < tol, i
        return rec.calls[i][1]

    ours = sampling.sample(sd, prompt, guidance=guidance, steps=steps, height=64, width=64, seed=3, progress=False)
    x = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(3)).to(dtype)
    for i, t in enumerate(fwd.timesteps):
        out = model(i, torch.cat([x, x]), t, ctx)
        x = fwd.step(out[:1] + guidance * (out[1:] - out[:1]), t, x, eta=0.0).prev_sample
    assert ours.dtype == dtype and rel(ours, x) < tol

    z0 = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(5), dtype=dtype)
    zs = sampling.invert(sd, z0, [prompt], steps=steps, progress=False)
    x = z0
    for j, t in enumerate(inv.timesteps):
        x = inv.step(model(steps + j, x, t, ctx[1:]), t, x).prev_sample
        assert rel(zs[j + 1], x) < tol, j
    assert rel(zs[-1], z0) > 0.1  # the inversion went somewhere


# ---- §9.5 single files -----------------------------------------------------------------------------------------------
def test_released_layout_single_file_matches_diffusers(sd2_dirs, ldm_files, folder_parts, capfd):
    path = ldm_files["whole"]
    sd = weights.load_model(path)
    err = capfd.readouterr().err.splitlines()
    assert err == [
        "whole.safetensors: assumed prediction_type 'v_prediction': an SD 2 file stores none and no yaml is beside it "
        "(diffusers' rule: v unless global_step is 875000); pass prediction_type='epsilon' for a 512 base model",
        "whole.safetensors: assumed native size 768 (SD 2 v_prediction models are 768 px; a single file does not "
        "store it)",
        "whole.safetensors: assumed upcast_attention on (on for SD 2 v-prediction models: float32 attention in half "
        "precision, as SD 2.1-768 needs)",
        "whole.safetensors: text encoder: ignored the last of its 3 OpenCLIP layers, text_projection and logit_scale "
        "(SD 2 reads the penultimate layer, §9.1)"]
    assert sd.extra["assumptions"] == err
    assert (sd.family, sd.prediction_type, sd.native_size) == ("sd2", "v_prediction", 768)
    assert sd.unet.config.heads == (1, 1, 2, 2) and sd.unet.config.upcast_attention
    assert sd.tokenizer.pad_id == 0 and sd.text_encoder.config.num_hidden_layers == 2

    d = str(sd2_dirs["v"])
    unet = diffusers.UNet2DConditionModel.from_single_file(str(path), config=d, subfolder="unet", local_files_only=True)
    vae = diffusers.AutoencoderKL.from_single_file(str(path), config=d, subfolder="vae", local_files_only=True)
    ours = parts(sd)
    g = torch.Generator().manual_seed(4)
    x, img = torch.randn(2, 4, 8, 16, generator=g), torch.rand(1, 3, 64, 64, generator=g) * 2 - 1
    ctx = torch.randn(2, 77, 128, generator=g)
    with torch.no_grad():
        z = vae.encode(img).latent_dist.mean
        theirs = [openclip_text(load_file(path), IDS, penultimate=True), unet(x, torch.tensor([1, 981]), ctx).sample,
                  z, vae.decode(z).sample]
    for a, b, c in zip(ours, theirs, folder_parts):
        assert rel(a, b) < 1e-4 and rel(a, c) < 1e-5


def test_diffusers_layout_ckpt_with_standard_yaml(sd2_dirs, ldm_files, folder_parts, capfd):
    from diffusers.loaders.single_file_utils import create_diffusers_clip_model_from_ldm

    path = ldm_files["23"]
    (path.parent / "v2-inference.yaml").write_text(V2_INFERENCE)
    try:
        sd = weights.load_model(path)
    finally:
        (path.parent / "v2-inference.yaml").unlink()
    assert capfd.readouterr().err.splitlines() == [
        "sd2.ckpt: read v2-inference.yaml from its folder (there is no sd2.yaml)",
        "sd2.ckpt: assumed native size 512 (SD 2 epsilon models are 512 px; a single file does not store it)",
        "sd2.ckpt: assumed upcast_attention off (on for SD 2 v-prediction models: float32 attention in half "
        "precision, as SD 2.1-768 needs)"]  # the yaml says epsilon; no layer to drop
    assert (sd.prediction_type, sd.native_size, sd.unet.config.upcast_attention) == ("epsilon", 512, False)
    assert sd.extra["config_file"].endswith("v2-inference.yaml")
    state = torch.load(path, weights_only=True)["state_dict"]
    text = create_diffusers_clip_model_from_ldm(transformers.CLIPTextModel, state, config=str(sd2_dirs["v"]),
                                                subfolder="text_encoder", local_files_only=True)
    ours = parts(sd)
    with torch.no_grad():
        assert rel(ours[0], text(IDS).last_hidden_state) < 1e-4
        assert rel(ours[0], openclip_text(state, IDS, penultimate=False)) < 1e-4
    assert all(rel(a, b) < 1e-5 for a, b in zip(ours, folder_parts))


def test_yaml_beside_with_the_same_stem_and_prediction_type_override(ldm_files, tmp_path, capfd):
    path = tmp_path / "mine.safetensors"
    shutil.copy(ldm_files["whole"], path)
    (tmp_path / "mine.yaml").write_text(V2_INFERENCE_V.replace("num_head_channels: 64", "num_head_channels: 32"))
    (tmp_path / "v2-inference.yaml").write_text(V2_INFERENCE)  # the file's own yaml wins over a standard name
    sd = weights.load_model(path)
    assert (sd.prediction_type, sd.native_size, sd.unet.config.heads) == ("v_prediction", 768, (2, 2, 4, 4))
    err = capfd.readouterr().err
    assert "prediction_type" not in err and "assumed native size 768" in err
    sd = weights.load_model(path, prediction_type="epsilon")  # the caller's word wins over the yaml's
    assert (sd.prediction_type, sd.native_size, sd.unet.config.upcast_attention) == ("epsilon", 512, False)
    (tmp_path / "mine.yaml").unlink()
    (tmp_path / "v2-inference-v.yaml").write_text(V2_INFERENCE_V)
    sd = weights.load_model(path)  # two standard names: neither is read, the rule applies
    assert "config_file" not in sd.extra
    assert "so neither is read (copy the right one to mine.yaml)" in capfd.readouterr().err
    with pytest.raises(ValueError, match="prediction_type must be one of"):
        weights.load_model(path, prediction_type="v")


@pytest.mark.parametrize("file, kind, size, upcast", [("whole", None, 768, True), ("23", "epsilon", 512, False)])
def test_save_folder_keeps_what_a_single_file_was_loaded_as(ldm_files, folder_parts, tmp_path, capfd, file, kind,
                                                              size, upcast):
    from weights.save import save_folder

    sd = weights.load_model(ldm_files[file], prediction_type=kind)
    capfd.readouterr()
    again = weights.load_model(save_folder(sd, tmp_path / "saved"))
    assert capfd.readouterr().err == ""  # nothing left to assume
    assert (again.family, again.prediction_type, again.native_size) == ("sd2", kind or "v_prediction", size)
    assert again.unet.config.upcast_attention == upcast and again.tokenizer.pad_id == 0
    assert all(torch.equal(a, b) for a, b in zip(parts(again), parts(sd)))


def test_global_step_875000_is_sd20_base(ldm_files, tmp_path, capfd):
    state = torch.load(ldm_files["23"], weights_only=True)
    state["global_step"] = 875000
    torch.save(state, tmp_path / "base.ckpt")
    sd = weights.load_model(tmp_path / "base.ckpt")
    assert (sd.prediction_type, sd.native_size) == ("epsilon", 512)
    assert "its global_step 875000 is SD 2.0-base's (diffusers' rule)" in capfd.readouterr().err


def test_folder_prediction_type_override_and_missing_keys(sd2_dirs, tmp_path, capfd):
    sd = weights.load_model(sd2_dirs["base"], prediction_type="v_prediction")
    assert sd.prediction_type == "v_prediction" and sd.native_size == 64  # a folder's size is its config's
    err = capfd.readouterr().err.strip()
    assert err == "base: prediction_type 'v_prediction' given, over its scheduler config's 'epsilon'"
    old = tmp_path / "old"
    shutil.copytree(sd2_dirs["v"], old)
    for part, key in (("unet/config.json", "upcast_attention"), ("scheduler/scheduler_config.json", "prediction_type")):
        cfg = json.loads((old / part).read_text())
        (old / part).write_text(json.dumps({k: v for k, v in cfg.items() if k != key}))
    sd = weights.load_model(old, prediction_type="v_prediction")
    assert sd.unet.config.upcast_attention and "assumed upcast_attention on" in capfd.readouterr().err
    sd = weights.load_model(old)
    assert sd.prediction_type == "epsilon" and not sd.unet.config.upcast_attention
    assert "assumed prediction_type 'epsilon' (its scheduler config names none" in capfd.readouterr().err


def test_strict_openclip_keys(ldm_files, tmp_path):
    state = load_file(ldm_files["whole"])
    bad = dict(state, **{OPENCLIP + "transformer.resblocks.0.attn.extra": torch.zeros(1)})
    save_file(bad, tmp_path / "extra.safetensors")
    with pytest.raises(StrictLoadError, match=r"unexpected: cond_stage_model\.model\.transformer\.resblocks\.0\.attn"):
        weights.load_model(tmp_path / "extra.safetensors")
    # without text_projection this is diffusers' layout: every layer is used, so logit_scale is an unused entry
    save_file({k: v for k, v in state.items() if k != OPENCLIP + "text_projection"}, tmp_path / "head.safetensors")
    with pytest.raises(StrictLoadError, match=r"unexpected: cond_stage_model\.model\.logit_scale"):
        weights.load_model(tmp_path / "head.safetensors")
    missing = {k: v for k, v in state.items() if not k.startswith(OPENCLIP + "transformer.resblocks.1.mlp")}
    save_file(missing, tmp_path / "missing.safetensors")
    with pytest.raises(StrictLoadError, match=r"missing: text_model\.encoder\.layers\.1\.mlp\.fc1\.bias"):
        weights.load_model(tmp_path / "missing.safetensors")


def test_hub_repo_id_from_offline_cache(sd2_dirs, folder_parts, tmp_path, monkeypatch):
    import huggingface_hub.constants as c

    commit = "0123456789abcdef0123456789abcdef01234567"
    for name, src in (("tiny-sd2", sd2_dirs["v"]), ("tiny-depth", None)):
        repo = tmp_path / "hub" / f"models--someone--{name}"
        snap = repo / "snapshots" / commit
        if src is not None:
            shutil.copytree(src, snap)
        else:  # configs only: refused before any weight is fetched
            snap.mkdir(parents=True)
            (snap / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionDepth2ImgPipeline"}))
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    sd = weights.load_model("someone/tiny-sd2")
    assert Path(sd.source).name == commit and (sd.family, sd.prediction_type) == ("sd2", "v_prediction")
    assert all(torch.equal(a, b) for a, b in zip(parts(sd), folder_parts))
    with pytest.raises(UnsupportedCheckpoint, match="someone/tiny-depth is an SD 2 depth-to-image model"):
        weights.load_model("someone/tiny-depth")


# ---- refusals, before any weight is read --------------------------------------------------------------------------
@pytest.mark.parametrize("index, unet, what", [
    ("StableDiffusionDepth2ImgPipeline", {}, "an SD 2 depth-to-image model"),
    ("StableDiffusionInpaintPipeline", {}, "an inpainting model"),
    ("StableUnCLIPPipeline", {}, "an SD 2.1 unCLIP model"),
    ("StableDiffusionUpscalePipeline", {}, "the SD x4 upscaler"),
    ("StableDiffusionXLPipeline", {}, r"an SDXL model \(StableDiffusionXLPipeline\)"),
    ("StableDiffusionPipeline", {"in_channels": 5}, "an SD 2 depth-to-image model .UNet with 5 input channels"),
    ("StableDiffusionPipeline", {"in_channels": 9}, "an inpainting model"),
    ("StableDiffusionPipeline", {"in_channels": 7, "num_class_embeds": 1000}, "the SD x4 upscaler"),
    ("StableDiffusionPipeline", {"class_embed_type": "projection"}, "an unCLIP model"),
    ("StableDiffusionPipeline", {"addition_embed_type": "text_time"}, "an SDXL-style model"),
])
def test_refused_folders(sd2_dirs, tmp_path, index, unet, what):
    folder = tmp_path / "f"
    shutil.copytree(sd2_dirs["v"], folder)
    (folder / "model_index.json").write_text(json.dumps({"_class_name": index}))
    cfg = json.loads((folder / "unet" / "config.json").read_text())
    (folder / "unet" / "config.json").write_text(json.dumps(cfg | unet))
    for w in folder.glob("*/*.safetensors"):
        w.write_bytes(b"not weights")  # never read
    with pytest.raises(UnsupportedCheckpoint, match=f"{what}.*; supported: SD 1.x and SD 2.x text-to-image"):
        weights.load_model(folder)


@pytest.mark.parametrize("extra, conv_in, what", [
    ({"depth_model.model.pretrained.x": 1}, 5, "an SD 2 depth-to-image model .depth_model"),
    ({}, 5, "an SD 2 depth-to-image model .UNet with 5 input channels"),
    ({}, 9, "an inpainting model"),
    ({"low_scale_model.betas": 1}, 7, "the SD x4 upscaler"),
    ({"noise_augmentor.betas": 1, "embedder.model.visual.x": 1}, 4, "an SD 2.1 unCLIP model"),
    ({"model.diffusion_model.label_emb.0.0.weight": 1}, 4, "a class-conditioned model"),
    ({"conditioner.embedders.1.model.positional_embedding": 1}, 4, "an SDXL model"),
])
def test_refused_single_files(ldm_files, tmp_path, extra, conv_in, what):
    # the keys of the tiny SD 2 file (no tensor data: refused from names and shapes) with the variant's differences
    state = {k: torch.zeros(1) for k in load_file(ldm_files["whole"])}
    state["model.diffusion_model.input_blocks.0.0.weight"] = torch.zeros(64, conv_in, 3, 3)
    state |= {k: torch.zeros(n) for k, n in extra.items()}
    save_file(state, tmp_path / "x.safetensors")
    with pytest.raises(UnsupportedCheckpoint, match=f"x.safetensors is {what}.*; supported: SD 1.x and SD 2.x"):
        weights.load_model(tmp_path / "x.safetensors")


# ---- the yaml reader --------------------------------------------------------------------------------------------
def test_yaml_reader_matches_pyyaml():
    yaml = pytest.importorskip("yaml")
    tricky = 'a:\n  - x: 1\n    y: [ "p", \'q\' ]\n  - 2.5e-3\nb: ~\nc: "h # not a comment"\nd:\n- -4\n- null\n'
    for text in (V2_INFERENCE_V, V2_INFERENCE, tricky):
        assert parse_yaml(text) == yaml.safe_load(text)
    cfg = parse_yaml(V2_INFERENCE_V)["model"]["params"]
    # the 768 v model's released yaml says image_size 64 (512 px): why the native size is not read from it (§9.5)
    assert cfg["parameterization"] == "v" and cfg["image_size"] == 64
    assert cfg["unet_config"]["params"]["image_size"] == 32
