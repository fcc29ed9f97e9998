"""Diffusers-layout folders: model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/.

Module names follow this layout, so weights load with no renaming (only text-encoder keys may lack
the `text_model.` prefix in some exports).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from model import CLIPTextConfig, CLIPTextEncoder, CLIPTokenizer, StableDiffusion, UNet, UNetConfig, VAE, VAEConfig

from .checkpoint import TensorSource, UnsupportedCheckpoint, fill_module

# Weight file names per part, in order of preference ({v} is ".fp16" etc. for a variant, else "").
WEIGHT_NAMES = {
    "unet": ["diffusion_pytorch_model{v}.safetensors", "diffusion_pytorch_model{v}.bin"],
    "vae": ["diffusion_pytorch_model{v}.safetensors", "diffusion_pytorch_model{v}.bin"],
    "text_encoder": ["model{v}.safetensors", "pytorch_model{v}.bin"],
}
POSITION_IDS = ("text_model.embeddings.position_ids", "embeddings.position_ids")  # an arange buffer, not a weight
SUPPORTED_PIPELINES = {"StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline", "DiffusionPipeline"}


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UnsupportedCheckpoint(f"{path} is missing") from None
    except json.JSONDecodeError as e:
        raise UnsupportedCheckpoint(f"{path} is not valid JSON ({e})") from None


def weight_file(part_dir: Path, part: str, variant: str | None) -> Path:
    """The weight file of one part; the variant (e.g. "fp16") first, then the plain name."""
    variants = [f".{variant}"] if variant else []
    for v in variants + [""]:
        for name in WEIGHT_NAMES[part]:
            if (part_dir / name.format(v=v)).exists():
                return part_dir / name.format(v=v)
    raise UnsupportedCheckpoint(f"no weights in {part_dir} (looked for {', '.join(n.format(v='') for n in WEIGHT_NAMES[part])})")


def _load_part(module: nn.Module, path: Path, what: str, dtype, device, rename=lambda k: k) -> nn.Module:
    src = TensorSource(path)
    names = {rename(k): k for k in src.keys() if k not in POSITION_IDS}
    return fill_module(module, src, names, what, dtype, device)


def text_key(key: str) -> str:
    """Text-encoder keys come with or without the `text_model.` prefix."""
    return key if key.startswith("text_model.") else "text_model." + key


def load_folder(folder: str | Path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                variant: str | None = None) -> StableDiffusion:
    """Load an SD v1 diffusers-layout folder."""
    folder = Path(folder)
    index = _read_json(folder / "model_index.json")
    if index.get("_class_name") not in SUPPORTED_PIPELINES:
        raise UnsupportedCheckpoint(f"{folder} is a {index.get('_class_name')}, not an SD v1 StableDiffusionPipeline")
    try:
        unet_cfg = UNetConfig.from_diffusers(_read_json(folder / "unet" / "config.json"))
        vae_cfg = VAEConfig.from_diffusers(_read_json(folder / "vae" / "config.json"))
        text_cfg = CLIPTextConfig.from_transformers(_read_json(folder / "text_encoder" / "config.json"))
    except ValueError as e:
        raise UnsupportedCheckpoint(f"{folder}: {e}") from None
    check_sd1(unet_cfg, text_cfg, str(folder))
    with torch.device("meta"):
        unet, vae, text = UNet(unet_cfg), VAE(vae_cfg), CLIPTextEncoder(text_cfg)
    _load_part(unet, weight_file(folder / "unet", "unet", variant), "unet", dtype, device)
    _load_part(vae, weight_file(folder / "vae", "vae", variant), "vae", dtype, device)
    _load_part(text, weight_file(folder / "text_encoder", "text_encoder", variant), "text_encoder", dtype, device,
               rename=text_key)
    tok_dir = folder / "tokenizer"
    tokenizer = CLIPTokenizer.from_folder(tok_dir) if (tok_dir / "vocab.json").exists() else CLIPTokenizer.bundled()
    sched = folder / "scheduler" / "scheduler_config.json"
    return StableDiffusion(tokenizer, text, unet, vae, vae_cfg.scaling_factor,
                           _read_json(sched) if sched.exists() else None, str(folder))


def check_sd1(unet_cfg: UNetConfig, text_cfg: CLIPTextConfig, where: str) -> None:
    """Reject models that load but are not SD v1 text-to-image models."""
    if unet_cfg.in_channels != 4:
        raise UnsupportedCheckpoint(f"{where}: UNet has {unet_cfg.in_channels} input channels (inpainting or "
                                    "depth model?); SD v1 text-to-image has 4")
    if unet_cfg.cross_attention_dim != text_cfg.hidden_size:
        raise UnsupportedCheckpoint(f"{where}: UNet cross-attention width {unet_cfg.cross_attention_dim} does "
                                    f"not match the text encoder's {text_cfg.hidden_size}")
