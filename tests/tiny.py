"""Seeded random models in the full SD v1 and SD 2 topologies with small widths, built with diffusers/transformers.

4 UNet levels, 2 layers per block, 16 transformer blocks, 8x VAE, the real 49,408-token vocabulary.
SD 2 (§9): linear proj_in/out, heads per level (64-channel heads), context width = text width, a GELU text
encoder in diffusers' 23-layer convention (the penultimate OpenCLIP layer), "!" padding, v or epsilon scheduler.
Used by the tests as the *independent* implementation that ours must agree with.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from model.tokenizer import BUNDLED_VOCAB, _vocab_from_bpe_file

UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(32, 64, 64, 64),
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    cross_attention_dim=64, attention_head_dim=8, norm_num_groups=32,
)
VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 32, 64, 64), layers_per_block=2,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=32,
    sample_size=512,
)
# hidden 64 -> 1 head, so SD v1's "CLIP heads = width / 64" rule holds for the single-file tests too.
TEXT = dict(vocab_size=49408, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=1,
            max_position_embeddings=77, hidden_act="quick_gelu", bos_token_id=49406, eos_token_id=49407,
            pad_token_id=49407)


# SD 2: heads of 64 channels (attention_head_dim is diffusers' per-level head COUNT), so the single-file rule
# heads = channels / 64 holds; text width 128 = 2 heads of 64 (open_clip's rule), context width = text width.
UNET2 = dict(UNET, block_out_channels=(64, 64, 128, 128), attention_head_dim=[1, 1, 2, 2], cross_attention_dim=128,
             use_linear_projection=True)
TEXT2 = dict(TEXT, hidden_size=128, intermediate_size=512, num_hidden_layers=2, num_attention_heads=2,
             hidden_act="gelu", pad_token_id=0)
# The two SD 2 kinds: 2.x-v (768-like: its own sample_size, upcast attention) and 2.x-base (512-like, epsilon).
SD2_KINDS = {"v": dict(prediction_type="v_prediction", sample_size=16, upcast_attention=True),
             "base": dict(prediction_type="epsilon", sample_size=8, upcast_attention=False)}


def _perturb(module: torch.nn.Module, gen: torch.Generator) -> None:
    """Make norms and biases non-trivial so a swapped weight/bias or a missing norm shows up."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim == 1:
                base = 1.0 if name.endswith("weight") else 0.0
                p.copy_(base + 0.1 * torch.randn(p.shape, generator=gen))
            else:
                p.add_(0.2 * p.std() * torch.randn(p.shape, generator=gen))


def write_tokenizer(folder: Path, pad: str = "<|endoftext|>") -> None:
    """vocab.json + merges.txt + configs, as transformers' CLIPTokenizer writes them (SD 2: pad "!")."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = _vocab_from_bpe_file(BUNDLED_VOCAB)
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n",
                                       encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>", "pad_token": pad, "unk_token": "<|endoftext|>",
        "do_lower_case": True}))
    (folder / "special_tokens_map.json").write_text(json.dumps({
        "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": pad,
        "unk_token": "<|endoftext|>"}))


def make_tiny_diffusers(folder: Path, seed: int = 0, safe: bool = True) -> Path:
    """Build and save the tiny model as a diffusers folder (the independent reference)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    folder = Path(folder)
    unet = UNet2DConditionModel(**UNET)
    vae = AutoencoderKL(**VAE)
    text = CLIPTextModel(CLIPTextConfig(**TEXT))
    for m in (unet, vae, text):
        _perturb(m, gen)
        m.eval()
    unet.save_pretrained(folder / "unet", safe_serialization=safe)
    vae.save_pretrained(folder / "vae", safe_serialization=safe)
    text.save_pretrained(folder / "text_encoder", safe_serialization=safe)
    write_tokenizer(folder / "tokenizer")
    return write_scheduler_and_index(folder, "epsilon")


def make_tiny_sd2(folder: Path, kind: str = "v", seed: int = 0, like: Path | None = None) -> Path:
    """Build and save a tiny SD 2 model ("v": 2.x-768-like, "base": 2.x-base-like) as a diffusers folder; with
    `like` (another tiny SD 2 folder), the same weights with this kind's configs (saves building them again)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    k = SD2_KINDS[kind]
    if like is not None:
        shutil.copytree(like, folder)
        unet_cfg = json.loads((folder / "unet" / "config.json").read_text())
        unet_cfg |= {"sample_size": k["sample_size"], "upcast_attention": k["upcast_attention"]}
        (folder / "unet" / "config.json").write_text(json.dumps(unet_cfg))
        sched_path = folder / "scheduler" / "scheduler_config.json"
        sched = json.loads(sched_path.read_text()) | {"prediction_type": k["prediction_type"]}
        sched_path.write_text(json.dumps(sched))
        return folder
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    folder = Path(folder)
    unet = UNet2DConditionModel(**dict(UNET2, sample_size=k["sample_size"], upcast_attention=k["upcast_attention"]))
    vae = AutoencoderKL(**VAE)
    text = CLIPTextModel(CLIPTextConfig(**TEXT2))
    for m in (unet, vae, text):
        _perturb(m, gen)
        m.eval()
    unet.save_pretrained(folder / "unet")
    vae.save_pretrained(folder / "vae")
    text.save_pretrained(folder / "text_encoder")
    write_tokenizer(folder / "tokenizer", pad="!")
    return write_scheduler_and_index(folder, k["prediction_type"])


def write_scheduler_and_index(folder: Path, prediction_type: str) -> Path:
    """The SD DDIM scheduler config and model_index.json of a diffusers folder (diffusers' own writers)."""
    from diffusers import DDIMScheduler

    DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                  set_alpha_to_one=False, steps_offset=1,
                  prediction_type=prediction_type).save_pretrained(folder / "scheduler")
    (folder / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.42.1",
        "feature_extractor": [None, None], "safety_checker": [None, None], "requires_safety_checker": False,
        "scheduler": ["diffusers", "DDIMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"]}))
    return folder


def write_inputs(folder: Path, source_hw: tuple[int, int] = (90, 120), seed: int = 1) -> Path:
    """Random edit inputs for CLI tests: s.png (source), r.png (64² reference), m.png (its centred square mask)."""
    import numpy as np
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (*source_hw, 3), dtype=np.uint8)).save(folder / "s.png")
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(folder / "r.png")
    m = np.zeros((64, 64), np.uint8)
    m[16:48, 16:48] = 255
    Image.fromarray(m).save(folder / "m.png")
    return folder


def to_ldm_state(folder: Path, ema: bool = False, whole_tower: bool = True) -> dict[str, torch.Tensor]:
    """The tiny diffusers folder as an original-LDM single-file state dict (for single-file loader tests).

    Written by inverting the project's rename tables; diffusers' own single-file loader reading the result
    is the independent check of those tables. An SD 2 folder (GELU text encoder) gets the OpenCLIP layout
    (§9.1): with `whole_tower`, as released files are (one more, unused last layer, text_projection and
    logit_scale); without, as a file written from a diffusers model is (its layers only).
    """
    from safetensors.torch import load_file

    from weights import ldm
    from weights.folder import text_key

    cfg = json.loads((folder / "unet" / "config.json").read_text())
    attn = [t == "CrossAttnDownBlock2D" for t in cfg["down_block_types"]]
    levels, n = len(attn), cfg["layers_per_block"]
    out: dict[str, torch.Tensor] = {}

    def inverse(key: str, table: dict[str, str], inner: list[tuple[str, str]], inner_if: str) -> str:
        new_prefix = max((p for p in table.values() if key.startswith(p)), key=len, default="")
        if inner_if in new_prefix:  # inner names first: the forward direction applies them last
            for old, new in inner:
                key = key.replace("." + new, "." + old)
        return {v: k for k, v in table.items()}[new_prefix] + key[len(new_prefix):] if new_prefix else key

    unet = load_file(folder / "unet" / "diffusion_pytorch_model.safetensors")
    for k, v in unet.items():
        key = inverse(k, ldm.unet_prefixes(levels, n, attn), ldm.RESNET_INNER, "resnets")
        out[ldm.UNET + key] = v
        if ema:  # EMA copy under model_ema.diffusion_model<key without dots>, raw weights made different
            out[ldm.EMA + "diffusion_model" + key.replace(".", "")] = v
            out[ldm.UNET + key] = v + 1.0
    vae_cfg = json.loads((folder / "vae" / "config.json").read_text())
    vae_table = ldm.vae_prefixes(len(vae_cfg["block_out_channels"]), vae_cfg["layers_per_block"])
    for k, v in load_file(folder / "vae" / "diffusion_pytorch_model.safetensors").items():
        if ".attentions." in k and k.endswith("weight") and v.ndim == 2:
            v = v[:, :, None, None]
        key = inverse(k, vae_table, ldm.VAE_INNER, "")
        out[ldm.VAE_P + key] = v
    text = {text_key(k): v for k, v in load_file(folder / "text_encoder" / "model.safetensors").items()}
    if json.loads((folder / "text_encoder" / "config.json").read_text())["hidden_act"] == "gelu":
        out |= to_openclip_state(text, whole_tower)
    else:
        for k, v in text.items():
            out[ldm.TEXT + k] = v  # transformers >= 5.6 saves CLIPTextModel without `text_model.`
        out[ldm.TEXT + "text_model.embeddings.position_ids"] = torch.arange(77)[None]
    if ema:
        out["model_ema.decay"], out["model_ema.num_updates"] = torch.tensor(0.9999), torch.tensor(1000)
    out["betas"] = torch.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2
    return out


def to_openclip_state(text: dict[str, torch.Tensor], whole_tower: bool = True,
                      seed: int = 7) -> dict[str, torch.Tensor]:
    """transformers CLIPTextModel weights (`text_model.*` names) in open_clip's layout under cond_stage_model.model.,
    by inverting weights/openclip.py's tables; q, k, v stacked into in_proj. `whole_tower` adds what a released SD 2
    file has besides: one more (random, unused) last layer, text_projection and logit_scale."""
    from weights import openclip

    gen = torch.Generator().manual_seed(seed)
    top = {v: k for k, v in openclip.TOP.items()}
    out: dict[str, torch.Tensor] = {}
    layers: dict[int, dict[str, torch.Tensor]] = {}
    for k, v in text.items():
        if k in top:
            out[openclip.OPENCLIP + top[k]] = v
        else:
            i, inner = k.removeprefix("text_model.encoder.layers.").split(".", 1)
            layers.setdefault(int(i), {})[inner] = v
    if whole_tower:
        last = len(layers)
        layers[last] = {k: v + 0.5 * torch.randn(v.shape, generator=gen) for k, v in layers[last - 1].items()}
        width = text["text_model.final_layer_norm.weight"].shape[0]
        out[openclip.OPENCLIP + "text_projection"] = torch.randn(width, width, generator=gen)
        out[openclip.OPENCLIP + "logit_scale"] = torch.tensor(4.6052)
    for i, params in layers.items():
        prefix = f"{openclip.OPENCLIP}transformer.resblocks.{i}."
        for fused, pattern in openclip.FUSED.items():
            out[prefix + fused] = torch.cat([params.pop(pattern.format(p)) for p in "qkv"])
        for k, v in params.items():
            old = next(o for o, n in openclip.LAYER if k.startswith(n))
            new = dict(openclip.LAYER)[old]
            out[prefix + old + k[len(new):]] = v
    return out
