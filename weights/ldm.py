"""Original LDM/CompVis single-file checkpoints (SD 1.x / 2.x `.safetensors` / `.ckpt`) -> diffusers names.

The renames are data: prefix tables built from the number of levels and layers per block (read from
the keys), plus a few inner renames. The architecture comes from tensor shapes and the family's fixed rules
(SD 1: UNet 8 heads everywhere, CLIP heads = width / 64; SD 2: UNet heads = channels / 64, OpenCLIP text tower,
§9.3, §9.1), never from hard-coded SD1.5 sizes. What a file does not store (SD 2's prediction type, native
size, upcast_attention) comes from its LDM yaml where there is one, else from the rules of §9.5, each printed.
"""
from __future__ import annotations

import re
from collections.abc import Callable

import torch

from model import CLIPTextConfig, CLIPTextEncoder, CLIPTokenizer, StableDiffusion, UNet, UNetConfig, VAE, VAEConfig
from model.tokenizer import EOS, SD2_PAD

from .checkpoint import StrictLoadError, TensorSource, UnsupportedCheckpoint, fill_module, note
from .folder import check_model, text_key
from .ldm_yaml import LDMConfig, find_ldm_config, read_ldm_config
from .openclip import OPENCLIP, openclip_config, openclip_names, split_fused
from .variants import SUPPORTED, check_ldm_keys

UNET, VAE_P, TEXT, EMA = "model.diffusion_model.", "first_stage_model.", "cond_stage_model.transformer.", "model_ema."

# Entries of real SD 1/2 files that are not weights of the three networks (documented, ignored):
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
SD2_HEAD_CHANNELS = 64  # §9.3: SD 2's UNet heads have 64 channels (its yamls' num_head_channels: 64)
SD2_V_SIZE, SD2_EPS_SIZE = 768, 512  # §9.5: SD 2 v-prediction models are 768 px, epsilon (base) ones 512
SD20_BASE_GLOBAL_STEP = 875000  # diffusers' marker of SD 2.0-base among SD 2 files (see choose_single_file_type)
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
        t |= {f"{part}.mid.block_1.": f"{part}.mid_block.resnets.0.",
              f"{part}.mid.block_2.": f"{part}.mid_block.resnets.1.",
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


def detect(keys: list[str], name: str, shape: Callable[[str], tuple[int, ...]] | None = None) -> str:
    """The family of a single file ("sd1" or "sd2"); refuses what is not SD 1.x / 2.x text-to-image, saying what it
    looks like instead (before any weight is read)."""
    if shape is not None:
        check_ldm_keys(keys, shape, name)
    elif any(k.startswith("conditioner.embedders.") for k in keys):
        raise UnsupportedCheckpoint(f"{name} looks like SDXL (conditioner.embedders.*); {SUPPORTED}")
    if any("lora" in k.lower() for k in keys[:200]):
        raise UnsupportedCheckpoint(f"{name} looks like a LoRA file; load a full SD 1.x / 2.x checkpoint")
    sd1, sd2 = any(k.startswith(TEXT) for k in keys), any(k.startswith(OPENCLIP) for k in keys)
    if sd1 and sd2:
        raise UnsupportedCheckpoint(f"{name} has two text encoders ({TEXT}* and {OPENCLIP}*); {SUPPORTED}")
    text = OPENCLIP if sd2 else TEXT
    for prefix, what in ((UNET, "UNet"), (VAE_P, "VAE"), (text, "text encoder")):
        if not any(k.startswith(prefix) for k in keys):
            raise UnsupportedCheckpoint(f"{name} has no {what} weights ({prefix}*); not an SD 1.x / 2.x single file")
    return "sd2" if sd2 else "sd1"


def load_single_file(path, dtype: torch.dtype = torch.float32, device="cpu", use_ema: bool = True,
                     prediction_type: str | None = None) -> StableDiffusion:
    """Load an original SD 1.x / 2.x single-file checkpoint (.safetensors or .ckpt), with its LDM yaml if one is
    beside it (§9.5); `prediction_type` overrides what the yaml says or the rules assume."""
    src = TensorSource(path)
    keys = src.keys()
    name = src.path.name
    family = detect(keys, name, src.shape)
    # SD 1 files load as they always have (no yaml read); SD 2 files read theirs (§9.5).
    yaml_path, yaml_note = find_ldm_config(src.path) if family == "sd2" else (None, None)
    yaml = read_ldm_config(yaml_path) if yaml_path is not None else None
    notes = [yaml_note] if yaml_note else []
    unet_keys = [k[len(UNET):] for k in keys if k.startswith(UNET)]
    vae_keys = [k[len(VAE_P):] for k in keys if k.startswith(VAE_P)]

    # UNet: which source of weights (EMA when present), then shapes -> config.
    ema_names = {k: EMA + "diffusion_model" + k.replace(".", "") for k in unet_keys}
    has_ema = any(k.startswith(EMA) and k not in IGNORED for k in keys)
    take_ema = use_ema and has_ema
    if take_ema and not all(v in keys for v in ema_names.values()):
        raise StrictLoadError(f"{name}: EMA weights are incomplete; pass use_ema=False for the raw ones")
    levels = len(_indices(unet_keys, r"input_blocks\.(\d+)\.0\.op\.")) + 1
    n_in = max(_indices(unet_keys, r"input_blocks\.(\d+)\.")) + 1
    n = (n_in - levels) // levels
    if levels * (n + 1) != n_in:
        raise UnsupportedCheckpoint(f"{name}: unexpected UNet layout ({n_in} input blocks, {levels} levels)")
    attn = [f"input_blocks.{1 + i * (n + 1)}.1.norm.weight" in unet_keys for i in range(levels)]
    table = unet_prefixes(levels, n, attn)
    unet_map = {rename(k, table, RESNET_INNER): (ema_names[k] if take_ema else UNET + k) for k in unet_keys}
    shape = lambda key: src.shape(unet_map[key])  # noqa: E731
    to_k = next(k for k in unet_map if k.endswith("attn2.to_k.weight"))
    channels = tuple(shape(f"down_blocks.{i}.resnets.0.conv1.weight")[0] for i in range(levels))
    kind, line = choose_single_file_type(prediction_type, yaml, family, name, src.global_step)
    if line:
        notes.append(line)
    sample_size, upcast, lines = single_file_assumptions(family, kind, name)
    notes += lines
    unet_cfg = UNetConfig(
        in_channels=shape("conv_in.weight")[1], out_channels=shape("conv_out.weight")[0],
        block_out_channels=channels, down_attention=tuple(attn), layers_per_block=n,
        heads=unet_heads(channels, family, yaml, name), cross_attention_dim=shape(to_k)[1],
        use_linear_projection=len(shape(to_k.replace("transformer_blocks.0.attn2.to_k", "proj_in"))) == 2,
        sample_size=sample_size, upcast_attention=upcast)

    vae_levels = len(_indices(vae_keys, r"encoder\.down\.(\d+)\."))
    vae_n = len(_indices(vae_keys, r"encoder\.down\.0\.block\.(\d+)\."))
    vae_map = {rename(k, vae_prefixes(vae_levels, vae_n), VAE_INNER): VAE_P + k for k in vae_keys}
    vae_cfg = VAEConfig(
        in_channels=src.shape(VAE_P + "encoder.conv_in.weight")[1],
        out_channels=src.shape(VAE_P + "decoder.conv_out.weight")[0],
        latent_channels=src.shape(VAE_P + "post_quant_conv.weight")[0], layers_per_block=vae_n,
        block_out_channels=tuple(src.shape(VAE_P + f"encoder.down.{i}.block.0.conv1.weight")[0]
                                 for i in range(vae_levels)),
        **({"scaling_factor": yaml.scale_factor} if yaml and yaml.scale_factor is not None else {}))

    if family == "sd2":
        text_map, ignored, file_layers = openclip_names(keys)
        _require(text_map, name)
        text_cfg = openclip_config(text_map, src.shape)
        if any(".resblocks." in k for k in ignored):
            notes.append(f"{name}: text encoder: ignored the last of its {file_layers} OpenCLIP layers, "
                         "text_projection and logit_scale (SD 2 reads the penultimate layer, §9.1)")
    else:
        text_keys = [k for k in keys if k.startswith(TEXT) and k not in IGNORED]
        text_map, ignored = {text_key(k[len(TEXT):]): k for k in text_keys}, []
        width = src.shape(text_map["text_model.embeddings.token_embedding.weight"])
        text_cfg = CLIPTextConfig(
            vocab_size=width[0], hidden_size=width[1], num_attention_heads=width[1] // 64,
            max_position_embeddings=src.shape(text_map["text_model.embeddings.position_embedding.weight"])[0],
            num_hidden_layers=len(_indices(list(text_map), r"text_model\.encoder\.layers\.(\d+)\.")),
            intermediate_size=src.shape(text_map["text_model.encoder.layers.0.mlp.fc1.weight"])[0])
    check_model(unet_cfg, text_cfg, name)

    used = set(unet_map.values()) | set(vae_map.values()) | set(text_map.values()) | set(ignored)
    unused = [k for k in keys if k not in used and k not in IGNORED
              and not (k.startswith(EMA) and not take_ema) and not (k.startswith(UNET) and take_ema)]
    if unused:
        raise StrictLoadError(f"{name}: checkpoint entries not used by the model: "
                              + ", ".join(unused[:20]) + (f", ... ({len(unused)} in all)" if len(unused) > 20 else ""))
    with torch.device("meta"):
        unet, vae, text = UNet(unet_cfg), VAE(vae_cfg), CLIPTextEncoder(text_cfg)
    fill_module(unet, src, unet_map, "unet", dtype, device)
    # LDM stores the VAE attention projections as 1x1 convolutions; ours are linear layers.
    fill_module(vae, src, vae_map, "vae", dtype, device, fix=_squeeze_1x1)
    # OpenCLIP stores q, k, v stacked in one in_proj (§9.1).
    fill_module(text, src, text_map, "text_encoder", dtype, device, fix=split_fused if family == "sd2" else None)
    for line in notes:
        note(line)
    extra = {"ema": take_ema} | ({"config_file": str(yaml_path)} if yaml_path else {})
    extra |= {"assumptions": notes} if notes else {}
    tokenizer = CLIPTokenizer.bundled(SD2_PAD if family == "sd2" else EOS)  # §9.2
    return StableDiffusion(tokenizer, text, unet, vae, vae_cfg.scaling_factor, None, str(path), extra, family, kind)


def choose_single_file_type(given: str | None, yaml: LDMConfig | None, family: str, name: str,
                            global_step: int | None) -> tuple[str, str | None]:
    """The prediction type of a single file and a note to print (§9.5): the caller's, else the yaml's, else
    SD 1: epsilon; SD 2: diffusers' rule (diffusers/loaders/single_file_utils.py, _legacy_load_scheduler, and the
    older convert_from_ckpt): "epsilon" if the file's global_step is 875000 (SD 2.0-base) else "v_prediction"."""
    if given is not None:
        if yaml is None or yaml.prediction_type == given:
            return given, None
        return given, f"{name}: prediction_type {given!r} given, over its yaml's {yaml.prediction_type!r}"
    if yaml is not None:
        return yaml.prediction_type, None
    if family == "sd1":
        return "epsilon", None
    if global_step == SD20_BASE_GLOBAL_STEP:
        return "epsilon", (f"{name}: assumed prediction_type 'epsilon': an SD 2 file stores none and no yaml is beside "
                           f"it; its global_step {global_step} is SD 2.0-base's (diffusers' rule); "
                           "pass prediction_type='v_prediction' for a 768 v model")
    return "v_prediction", (f"{name}: assumed prediction_type 'v_prediction': an SD 2 file stores none and no yaml is "
                            "beside it (diffusers' rule: v unless global_step is 875000); "
                            "pass prediction_type='epsilon' for a 512 base model")


def single_file_assumptions(family: str, kind: str, name: str) -> tuple[int, bool, list[str]]:
    """(UNet sample_size, upcast_attention, notes) of a single file, which stores neither (§9.5): SD 1 is
    64 (512 px) without upcast; SD 2 is 768 px with upcast for v models, 512 px without for epsilon models. An LDM
    yaml does not tell them: its model.params.image_size is 64 in both released SD 2 yamls (the 768 v one too), and
    LDM's attention is always float32 (ATTN_PRECISION), so neither is read from it."""
    if family == "sd1":
        return 64, False, []
    v = kind == "v_prediction"
    size = SD2_V_SIZE if v else SD2_EPS_SIZE
    return size // 8, v, [
        f"{name}: assumed native size {size} (SD 2 {kind} models are {size} px; a single file does not store it)",
        f"{name}: assumed upcast_attention {'on' if v else 'off'} (on for SD 2 v-prediction models: float32 "
        "attention in half precision, as SD 2.1-768 needs)"]


def unet_heads(channels: tuple[int, ...], family: str, yaml: LDMConfig | None, name: str) -> tuple[int, ...]:
    """Heads per level: from the yaml (num_head_channels, else num_heads), else SD 1: 8; SD 2: channels / 64."""
    from_yaml = [yaml.heads(c) for c in channels] if yaml is not None else [None]
    if None not in from_yaml:
        return tuple(from_yaml)
    if family == "sd1":
        return (8,) * len(channels)
    if any(c % SD2_HEAD_CHANNELS for c in channels):
        stem = name.rsplit(".", 1)[0]
        raise UnsupportedCheckpoint(f"{name}: UNet channels {channels} are not multiples of SD 2's "
                                    f"{SD2_HEAD_CHANNELS}-channel heads; put its LDM yaml beside it as {stem}.yaml")
    return tuple(c // SD2_HEAD_CHANNELS for c in channels)


def _require(names: dict[str, str], where: str) -> None:
    """The OpenCLIP tensors the text encoder's sizes are read from must be there."""
    wanted = ("text_model.embeddings.token_embedding.weight", "text_model.embeddings.position_embedding.weight",
              "text_model.encoder.layers.0.mlp.fc1.weight")
    missing = [w for w in wanted if w not in names]
    if missing:
        raise StrictLoadError(f"{where}: text_encoder: checkpoint and model do not match; "
                              f"missing: {', '.join(missing)}")


def _squeeze_1x1(key: str, t: torch.Tensor) -> torch.Tensor:
    return t[:, :, 0, 0] if ".attentions." in key and key.endswith("weight") and t.ndim == 4 else t
