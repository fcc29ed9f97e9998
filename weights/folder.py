"""Diffusers-layout folders: model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/.

Module names follow this layout, so weights load with no renaming (only text-encoder keys may lack
the `text_model.` prefix in some exports). SD 2 folders (§9) have the same layout: the family is read from
the text encoder (GELU: OpenCLIP), the prediction type from the scheduler config, the pad token from the tokenizer
folder, heads and upcast_attention from the UNet config.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from torch import nn

from model import (PREDICTION_TYPES, CLIPTextConfig, CLIPTextEncoder, CLIPTokenizer, StableDiffusion, UNet, UNetConfig,
                   VAE, VAEConfig)
from model.tokenizer import EOS, SD2_PAD

from .checkpoint import TensorSource, UnsupportedCheckpoint, fill_module, note
from .variants import SUPPORTED_PIPELINES, check_pipeline, check_unet_config  # noqa: F401 - re-exported

# Weight file names per part, in order of preference ({v} is ".fp16" etc. for a variant, else "").
WEIGHT_NAMES = {
    "unet": ["diffusion_pytorch_model{v}.safetensors", "diffusion_pytorch_model{v}.bin"],
    "vae": ["diffusion_pytorch_model{v}.safetensors", "diffusion_pytorch_model{v}.bin"],
    "text_encoder": ["model{v}.safetensors", "pytorch_model{v}.bin"],
}
POSITION_IDS = ("text_model.embeddings.position_ids", "embeddings.position_ids")  # an arange buffer, not a weight

MODEL_SETTINGS = "specref.json"  # a model folder's own editor defaults, e.g. {"edit_defaults": {"map_blocks": [...]}}

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
    names = ", ".join(n.format(v="") for n in WEIGHT_NAMES[part])
    raise UnsupportedCheckpoint(f"no weights in {part_dir} (looked for {names})")


def _load_part(module: nn.Module, path: Path, what: str, dtype, device, rename=lambda k: k) -> nn.Module:
    src = TensorSource(path)
    names = {rename(k): k for k in src.keys() if k not in POSITION_IDS}
    return fill_module(module, src, names, what, dtype, device)


def text_key(key: str) -> str:
    """Text-encoder keys come with or without the `text_model.` prefix."""
    return key if key.startswith("text_model.") else "text_model." + key


def load_folder(folder: str | Path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                variant: str | None = None, prediction_type: str | None = None) -> StableDiffusion:
    """Load an SD 1.x / 2.x diffusers-layout folder; `prediction_type` overrides the scheduler config's."""
    folder = Path(folder)
    unet_raw = check_configs(folder)
    try:
        unet_cfg = UNetConfig.from_diffusers(unet_raw)
        vae_cfg = VAEConfig.from_diffusers(_read_json(folder / "vae" / "config.json"))
        text_cfg = CLIPTextConfig.from_transformers(_read_json(folder / "text_encoder" / "config.json"))
    except ValueError as e:
        raise UnsupportedCheckpoint(f"{folder}: {e}") from None
    check_model(unet_cfg, text_cfg, str(folder))
    family = family_of(text_cfg)
    sched = folder / "scheduler" / "scheduler_config.json"
    sched_cfg = _read_json(sched) if sched.exists() else None
    prediction_type, line = choose_prediction_type(prediction_type, (sched_cfg or {}).get("prediction_type"),
                                                   family, folder.name)
    notes = [line] if line else []
    if "upcast_attention" not in unet_raw and family == "sd2" and prediction_type == "v_prediction":
        # §9.3: a config without the key is older than it; SD 2.1-768 needs it, and it is harmless elsewhere.
        unet_cfg = dataclasses.replace(unet_cfg, upcast_attention=True)
        notes.append(f"{folder.name}: assumed upcast_attention on (its UNet config names none; on for SD 2 "
                     "v-prediction models, float32 attention in half precision as SD 2.1-768 needs)")
    with torch.device("meta"):
        unet, vae, text = UNet(unet_cfg), VAE(vae_cfg), CLIPTextEncoder(text_cfg)
    _load_part(unet, weight_file(folder / "unet", "unet", variant), "unet", dtype, device)
    _load_part(vae, weight_file(folder / "vae", "vae", variant), "vae", dtype, device)
    _load_part(text, weight_file(folder / "text_encoder", "text_encoder", variant), "text_encoder", dtype, device,
               rename=text_key)
    tok_dir = folder / "tokenizer"
    if (tok_dir / "vocab.json").exists():
        tokenizer = CLIPTokenizer.from_folder(tok_dir)
    else:  # no tokenizer (e.g. weights.save's folders): the bundled vocabulary, padded as the family pads (§9.2)
        tokenizer = CLIPTokenizer.bundled(SD2_PAD if family == "sd2" else EOS)
    for line in notes:
        note(line)
    extra = {"assumptions": notes} if notes else {}
    if (folder / MODEL_SETTINGS).exists():  # the editor's defaults this model carries (§8.4; checked by the editor)
        defaults = _read_json(folder / MODEL_SETTINGS).get("edit_defaults", {})
        if not isinstance(defaults, dict):
            raise UnsupportedCheckpoint(f"{folder / MODEL_SETTINGS}: edit_defaults must be an object of settings")
        extra["edit_defaults"] = defaults
    return StableDiffusion(tokenizer, text, unet, vae, vae_cfg.scaling_factor, sched_cfg, str(folder), extra,
                           family, prediction_type)


def check_configs(folder: Path, where: str | None = None) -> dict:
    """Refuse, from model_index.json and unet/config.json alone, what is not SD 1.x / 2.x text-to-image (before any
    weight is read); returns the UNet config. `where` names the model in messages (default: the folder)."""
    where = where or str(folder)
    index = _read_json(folder / "model_index.json")
    check_pipeline(index.get("_class_name"), where)
    unet_raw = _read_json(folder / "unet" / "config.json")
    check_unet_config(unet_raw, where)
    return unet_raw


def family_of(text_cfg: CLIPTextConfig) -> str:
    """"sd2" for SD 2's OpenCLIP ViT-H text encoder (GELU), "sd1" for OpenAI CLIP's (quick-GELU) (§9.1)."""
    return "sd2" if text_cfg.hidden_act == "gelu" else "sd1"


def choose_prediction_type(given: str | None, stored: str | None, family: str, where: str) -> tuple[str, str | None]:
    """The model's prediction type and a note to print: `given` (the caller's) wins over `stored` (the scheduler
    config's), which wins over diffusers' default "epsilon" (§9.4)."""
    for value, whose in ((given, "prediction_type"), (stored, f"{where}'s scheduler config prediction_type")):
        if value is not None and value not in PREDICTION_TYPES:
            raise UnsupportedCheckpoint(f"{whose} {value!r} is not supported "
                                        f"(supported: {', '.join(PREDICTION_TYPES)})")
    if given is not None:
        differs = stored is not None and stored != given
        line = f"{where}: prediction_type {given!r} given, over its scheduler config's {stored!r}"
        return given, line if differs else None
    if stored is not None:
        return stored, None
    line = f"{where}: assumed prediction_type 'epsilon' (its scheduler config names none; diffusers' default)"
    return "epsilon", line if family == "sd2" else None


def check_model(unet_cfg: UNetConfig, text_cfg: CLIPTextConfig, where: str) -> None:
    """Reject models that load but are not SD 1.x / 2.x text-to-image models."""
    if unet_cfg.in_channels != 4:
        raise UnsupportedCheckpoint(f"{where}: UNet has {unet_cfg.in_channels} input channels; SD 1.x/2.x "
                                    "text-to-image has 4")
    if unet_cfg.cross_attention_dim != text_cfg.hidden_size:
        raise UnsupportedCheckpoint(f"{where}: UNet cross-attention width {unet_cfg.cross_attention_dim} does "
                                    f"not match the text encoder's {text_cfg.hidden_size}")
