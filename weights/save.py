"""Writing a model as a diffusers-layout folder (safetensors), e.g. for the demo model."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from model import StableDiffusion

from .folder import WEIGHT_NAMES


def save_folder(sd: StableDiffusion, folder: str | Path, dtype: torch.dtype | None = None) -> Path:
    """Save `sd` as a diffusers folder that `weights.load_model` (and diffusers) can read."""
    folder = Path(folder)
    parts = {"unet": (sd.unet, sd.unet.config.to_diffusers()), "vae": (sd.vae, sd.vae.config.to_diffusers()),
             "text_encoder": (sd.text_encoder, sd.text_encoder.config.to_transformers())}
    for name, (module, config) in parts.items():
        (folder / name).mkdir(parents=True, exist_ok=True)
        state = {k: (v.to(dtype) if dtype and v.is_floating_point() else v).contiguous().cpu()
                 for k, v in module.state_dict().items()}
        save_file(state, folder / name / WEIGHT_NAMES[name][0].format(v=""))
        (folder / name / "config.json").write_text(json.dumps(config, indent=2))
    (folder / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline", "scheduler": ["diffusers", "DDIMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"]}, indent=2))
    if sd.scheduler_config is not None:
        (folder / "scheduler").mkdir(exist_ok=True)
        (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(sd.scheduler_config, indent=2))
    return folder
