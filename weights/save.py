"""Writing a model as a diffusers-layout folder (safetensors), e.g. for the demo model."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from model import StableDiffusion

from .folder import WEIGHT_NAMES


# SD's DDIM scheduler config (the schedule §2 uses; set_alpha_to_one/steps_offset are the method's anyway)
DDIM_CONFIG = {"_class_name": "DDIMScheduler", "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
               "beta_schedule": "scaled_linear", "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1}
MODEL_INDEX = {"_class_name": "StableDiffusionPipeline", "scheduler": ["diffusers", "DDIMScheduler"],
               "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
               "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"]}


def save_part(module: torch.nn.Module, config: dict, folder: str | Path, name: str,
              dtype: torch.dtype | None = None) -> int:
    """Write one part ("unet", "vae", "text_encoder") as `folder/name/{config.json, weights}`; the file's bytes."""
    (Path(folder) / name).mkdir(parents=True, exist_ok=True)
    state = {k: (v.to(dtype) if dtype and v.is_floating_point() else v).contiguous().cpu()
             for k, v in module.state_dict().items()}
    path = Path(folder) / name / WEIGHT_NAMES[name][0].format(v="")
    save_file(state, path)
    (Path(folder) / name / "config.json").write_text(json.dumps(config, indent=2))
    return path.stat().st_size


def save_folder(sd: StableDiffusion, folder: str | Path, dtype: torch.dtype | None = None) -> Path:
    """Save `sd` as a diffusers folder that `weights.load_model` (and diffusers) can read."""
    folder = Path(folder)
    save_part(sd.unet, sd.unet.config.to_diffusers(), folder, "unet", dtype)
    save_part(sd.vae, sd.vae.config.to_diffusers(), folder, "vae", dtype)
    save_part(sd.text_encoder, sd.text_encoder.config.to_transformers(), folder, "text_encoder", dtype)
    (folder / "model_index.json").write_text(json.dumps(MODEL_INDEX, indent=2))
    if sd.extra.get("edit_defaults"):  # the editor's defaults this model carries (§8.4)
        (folder / "specref.json").write_text(json.dumps({"edit_defaults": sd.extra["edit_defaults"]}, indent=1))
    sched = scheduler_config(sd)
    if sched is not None:
        (folder / "scheduler").mkdir(exist_ok=True)
        (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(sched, indent=2))
    return folder


def scheduler_config(sd: StableDiffusion) -> dict | None:
    """The scheduler config to save: the model's own, with its prediction type (§9.4), which a loaded single
    file has from its yaml or an assumption and a folder from its config or the caller; none for an SD 1 epsilon
    model that came without one."""
    sched = sd.scheduler_config
    if sched is None and (sd.family != "sd1" or sd.prediction_type != "epsilon"):
        return DDIM_CONFIG | {"prediction_type": sd.prediction_type}
    if sched is not None and sched.get("prediction_type", "epsilon") != sd.prediction_type:
        return sched | {"prediction_type": sd.prediction_type}
    return sched
