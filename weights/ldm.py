"""Original LDM/CompVis single-file checkpoints (SD v1 `.safetensors` / `.ckpt`) -> diffusers names.

The renames are data: prefix tables built from the number of levels and layers per block (read from
the keys), plus a few inner renames. The architecture comes from tensor shapes and SD v1's fixed rules
(UNet: 8 heads everywhere; CLIP: heads = width / 64), never from hard-coded SD1.5 sizes.
"""
from __future__ import annotations

import re

import torch

from model import CLIPTextConfig, CLIPTextEncoder, CLIPTokenizer, StableDiffusion, UNet, UNetConfig, VAE, VAEConfig

from .checkpoint import StrictLoadError, TensorSource, UnsupportedCheckpoint, fill_module
from .folder import check_sd1, text_key

UNET, VAE_P, TEXT, EMA = "model.diffusion_model.", "first_stage_model.", "cond_stage_model.transformer.", "model_ema."

# Entries of real SD v1 files that are not weights of the three networks (documented, ignored):
IGNORED = {
    # the training noise schedule, stored as buffers of the LatentDiffusion module
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
    "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2",
    "logvar",  # learned-variance buffer of the training loss
    "model_ema.decay", "model_ema.num_updates",  # EMA counters
    TEXT + "text_model.embeddings.position_ids", TEXT + "embeddings.position_ids",  # arange buffer
}

RESNET_INNER = [("in_layers.0.", "norm1."), ("in_layers.2.", "conv1."), ("emb_layers.1.", "time_emb_proj."),
                ("out_layers.0.", "norm2."), ("out_layers.3.", "conv2."), ("skip_connection.", "conv_shortcut.")]
VAE_INNER = [("nin_shortcut.", "conv_shortcut."), ("attentions.0.norm.", "attentions.0.group_norm."),
             ("attentions.0.q.", "attentions.0.to_q."), ("attentions.0.k.", "attentions.0.to_k."),
             ("attentions.0.v.", "attentions.0.to_v."), ("attentions.0.proj_out.", "attentions.0.to_out.0.")]


def unet_prefixes(levels: int, n: int, attn: list[bool]) -> dict[str, str]:
    """LDM UNet prefixes -> diffusers prefixes, for `levels` levels of `n` layers."""
    t = {"time_embed.0.": "time_embedding.linear_1.", "time_embed.2.": "time_embedding.linear_2.",
         "input_blocks.0.0.": "conv_in.", "out.0.": "conv_norm_out.", "out.2.": "conv_out.",
         "middle_block.0.": "mid_block.resnets.0.", "middle_block.1.": "mid_block.attentions.0.",
         "middle_block.2.": "mid_block.resnets.1."}
    for i in range(levels):
        for j in range(n):
            k = 1 + i * (n + 1) + j
            t[f"input_blocks.{k}.0."] = f"down_blocks.{i}.resnets.{j}."
            t[f"input_blocks.{k}.1."] = f"down_blocks.{i}.attentions.{j}."
        if i < levels - 1:
            t[f"input_blocks.{(i + 1) * (n + 1)}.0.op."] = f"down_blocks.{i}.downsamplers.0.conv."
        up_attn = attn[levels - 1 - i]
        for j in range(n + 1):
            t[f"output_blocks.{i * (n + 1) + j}.0."] = f"up_blocks.{i}.resnets.{j}."
            t[f"output_blocks.{i * (n + 1) + j}.1."] = f"up_blocks.{i}.attentions.{j}."
        if i < levels - 1:
            t[f"output_blocks.{i * (n + 1) + n}.{2 if up_attn else 1}.conv."] = f"up_blocks.{i}.upsamplers.0.conv."
    return t


def vae_prefixes(levels: int, n: int) -> dict[str, str]:
    """LDM VAE prefixes -> diffusers prefixes (the decoder's levels are numbered in reverse)."""
    t = {}
    for part in ("encoder", "decoder"):
        t |= {f"{part}.mid.block_1.": f"{part}.mid_block.resnets.0.", f"{part}.mid.block_2.": f"{part}.mid_block.resnets.1.",
              f"{part}.mid.attn_1.": f"{part}.mid_block.attentions.0.", f"{part}.norm_out.": f"{part}.conv_norm_out."}
    for i in range(levels):
        t[f"encoder.down.{i}.downsample.conv."] = f"encoder.down_blocks.{i}.downsamplers.0.conv."
        t[f"decoder.up.{i}.upsample.conv."] = f"decoder.up_blocks.{levels - 1 - i}.upsamplers.0.conv."
        for j in range(n + 1):
            t[f"encoder.down.{i}.block.{j}."] = f"encoder.down_blocks.{i}.resnets.{j}."
            t[f"decoder.up.{i}.block.{j}."] = f"decoder.up_blocks.{levels - 1 - i}.resnets.{j}."
    return t


def rename(key: str, prefixes: dict[str, str], inner: list[tuple[str, str]]) -> str:
    """Apply the longest matching prefix, then the inner renames."""
    best = max((p for p in prefixes if key.startswith(p)), key=len, default="")
    key = prefixes[best] + key[len(best):] if best else key
    for old, new in inner:
        key = key.replace("." + old, "." + new)
    return key


def _indices(keys: list[str], pattern: str) -> set[int]:
    return {int(m.group(1)) for k in keys if (m := re.match(pattern, k))}


def detect(keys: list[str], name: str) -> None:
    """Refuse what is not an SD v1 single file, with what it looks like instead."""
    if any(k.startswith("conditioner.embedders.") for k in keys):
        raise UnsupportedCheckpoint(f"{name} looks like SDXL (conditioner.embedders.*); only SD v1.x is supported")
    if any(k.startswith("cond_stage_model.model.") for k in keys):
        raise UnsupportedCheckpoint(f"{name} looks like SD 2.x (OpenCLIP text encoder); only SD v1.x is supported")
    if any("lora" in k.lower() for k in keys[:200]):
        raise UnsupportedCheckpoint(f"{name} looks like a LoRA file; load a full SD v1 checkpoint")
    for prefix, what in ((UNET, "UNet"), (VAE_P, "VAE"), (TEXT, "CLIP text encoder")):
        if not any(k.startswith(prefix) for k in keys):
            raise UnsupportedCheckpoint(f"{name} has no {what} weights ({prefix}*); not an SD v1 single file")


def load_single_file(path, dtype: torch.dtype = torch.float32, device="cpu", use_ema: bool = True) -> StableDiffusion:
    """Load an original SD v1 single-file checkpoint (.safetensors or .ckpt)."""
    src = TensorSource(path)
    keys = src.keys()
    detect(keys, src.path.name)
    unet_keys = [k[len(UNET):] for k in keys if k.startswith(UNET)]
    vae_keys = [k[len(VAE_P):] for k in keys if k.startswith(VAE_P)]
    text_keys = [k for k in keys if k.startswith(TEXT) and k not in IGNORED]

    # UNet: which source of weights (EMA when present), then shapes -> config.
    ema_names = {k: EMA + "diffusion_model" + k.replace(".", "") for k in unet_keys}
    has_ema = any(k.startswith(EMA) and k not in IGNORED for k in keys)
    take_ema = use_ema and has_ema
    if take_ema and not all(v in keys for v in ema_names.values()):
        raise StrictLoadError(f"{src.path.name}: EMA weights are incomplete; pass use_ema=False for the raw ones")
    levels = len(_indices(unet_keys, r"input_blocks\.(\d+)\.0\.op\.")) + 1
    n_in = max(_indices(unet_keys, r"input_blocks\.(\d+)\.")) + 1
    n = (n_in - levels) // levels
    if levels * (n + 1) != n_in:
        raise UnsupportedCheckpoint(f"{src.path.name}: unexpected UNet layout ({n_in} input blocks, {levels} levels)")
    attn = [f"input_blocks.{1 + i * (n + 1)}.1.norm.weight" in unet_keys for i in range(levels)]
    table = unet_prefixes(levels, n, attn)
    unet_map = {rename(k, table, RESNET_INNER): (ema_names[k] if take_ema else UNET + k) for k in unet_keys}
    shape = lambda name: src.shape(unet_map[name])  # noqa: E731
    to_k = next(k for k in unet_map if k.endswith("attn2.to_k.weight"))
    unet_cfg = UNetConfig(
        in_channels=shape("conv_in.weight")[1], out_channels=shape("conv_out.weight")[0],
        block_out_channels=tuple(shape(f"down_blocks.{i}.resnets.0.conv1.weight")[0] for i in range(levels)),
        down_attention=tuple(attn), layers_per_block=n, heads=(8,) * levels, cross_attention_dim=shape(to_k)[1],
        use_linear_projection=len(src.shape(unet_map[to_k.replace("transformer_blocks.0.attn2.to_k", "proj_in")])) == 2)

    vae_levels = len(_indices(vae_keys, r"encoder\.down\.(\d+)\."))
    vae_n = len(_indices(vae_keys, r"encoder\.down\.0\.block\.(\d+)\."))
    vae_map = {rename(k, vae_prefixes(vae_levels, vae_n), VAE_INNER): VAE_P + k for k in vae_keys}
    vae_cfg = VAEConfig(
        in_channels=src.shape(VAE_P + "encoder.conv_in.weight")[1], out_channels=src.shape(VAE_P + "decoder.conv_out.weight")[0],
        latent_channels=src.shape(VAE_P + "post_quant_conv.weight")[0], layers_per_block=vae_n,
        block_out_channels=tuple(src.shape(VAE_P + f"encoder.down.{i}.block.0.conv1.weight")[0] for i in range(vae_levels)))

    text_map = {text_key(k[len(TEXT):]): k for k in text_keys}
    width = src.shape(text_map["text_model.embeddings.token_embedding.weight"])
    text_cfg = CLIPTextConfig(
        vocab_size=width[0], hidden_size=width[1], num_attention_heads=width[1] // 64,
        max_position_embeddings=src.shape(text_map["text_model.embeddings.position_embedding.weight"])[0],
        num_hidden_layers=len(_indices(list(text_map), r"text_model\.encoder\.layers\.(\d+)\.")),
        intermediate_size=src.shape(text_map["text_model.encoder.layers.0.mlp.fc1.weight"])[0])
    check_sd1(unet_cfg, text_cfg, src.path.name)

    used = set(unet_map.values()) | set(vae_map.values()) | set(text_map.values())
    unused = [k for k in keys if k not in used and k not in IGNORED
              and not (k.startswith(EMA) and not take_ema) and not (k.startswith(UNET) and take_ema)]
    if unused:
        raise StrictLoadError(f"{src.path.name}: checkpoint entries not used by the model: "
                              + ", ".join(unused[:20]) + (f", ... ({len(unused)} in all)" if len(unused) > 20 else ""))
    with torch.device("meta"):
        unet, vae, text = UNet(unet_cfg), VAE(vae_cfg), CLIPTextEncoder(text_cfg)
    fill_module(unet, src, unet_map, "unet", dtype, device)
    # LDM stores the VAE attention projections as 1x1 convolutions; ours are linear layers.
    fill_module(vae, src, vae_map, "vae", dtype, device, fix=_squeeze_1x1)
    fill_module(text, src, text_map, "text_encoder", dtype, device)
    return StableDiffusion(CLIPTokenizer.bundled(), text, unet, vae, vae_cfg.scaling_factor, None, str(path),
                           {"ema": take_ema})


def _squeeze_1x1(key: str, t: torch.Tensor) -> torch.Tensor:
    return t[:, :, 0, 0] if ".attentions." in key and key.endswith("weight") and t.ndim == 4 else t
