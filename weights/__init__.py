"""Checkpoint loading: diffusers folders, LDM single files (.safetensors/.ckpt), Hub repo ids; SD 1.x and 2.x.

    sd = weights.load_model(source, dtype=torch.float32, device="cpu")
    sd.family, sd.prediction_type, sd.native_size  # "sd1"/"sd2", "epsilon"/"v_prediction", 512/768 (§9)
"""
from __future__ import annotations

import re
from pathlib import Path

import torch

from model import PREDICTION_TYPES, StableDiffusion

from .checkpoint import StrictLoadError, UnsupportedCheckpoint
from .folder import WEIGHT_NAMES, check_configs, load_folder
from .ldm import load_single_file
from .precision import resolve_dtype, warn_slow

__all__ = ["load_model", "UnsupportedCheckpoint", "StrictLoadError", "DEFAULT_MODEL", "ASSETS", "hub_download",
           "resolve_dtype"]


def _assets() -> Path:
    """The demo assets: installed as package data `specref/assets` (a wheel), else the repo's `assets/` folder."""
    top = Path(__file__).resolve().parent.parent
    installed = top / "specref" / "assets"
    return installed if (installed / "toy-sd").is_dir() else top / "assets"


ASSETS = _assets()
# The project's embedded demo model (a diffusers folder shipped in the repo and in its wheels), used when no
# source is given.
DEFAULT_MODEL = ASSETS / "toy-sd"
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def load_model(source: str | Path | None = None, dtype: torch.dtype | str = torch.float32,
               device: str | torch.device = "cpu", use_ema: bool = True, variant: str | None = None,
               revision: str | None = None, prediction_type: str | None = None) -> StableDiffusion:
    """Load SD 1.x / 2.x weights from a diffusers folder, an LDM single file or a Hub repo id (None: the demo model).

    dtype: a torch.dtype or a name, "auto" included (weights.precision.resolve_dtype: float16 on CUDA, bfloat16
    on a CPU with native bf16, else float32).
    prediction_type: "epsilon" or "v_prediction" to override what the scheduler config or the LDM yaml says, or
    what is assumed for an SD 2 single file without a yaml (§9.5; every assumption is printed on stderr and
    kept in sd.extra["assumptions"]).
    """
    if prediction_type is not None and prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
    dtype, _ = resolve_dtype(dtype, device)
    warn_slow(dtype, device)
    if source is None:
        if not (DEFAULT_MODEL / "model_index.json").exists():
            raise FileNotFoundError(f"no model given and the embedded demo model is missing at {DEFAULT_MODEL} "
                                    "(it ships "
                                    "in the source repository and in wheels built from it: `pip install .` or "
                                    "`pip install -e .` from a clone, or give a model)")
        source = DEFAULT_MODEL
    path = Path(source).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").exists():
            raise UnsupportedCheckpoint(f"{path} is a folder without model_index.json (not a diffusers SD folder)")
        return load_folder(path, dtype, device, variant, prediction_type)
    if path.is_file():
        return load_single_file(path, dtype, device, use_ema, prediction_type)
    if isinstance(source, str) and _REPO_ID.match(source) and not source.startswith((".", "/")):
        return load_folder(hub_download(source, variant, revision), dtype, device, variant, prediction_type)
    raise FileNotFoundError(f"model source {source!r} is not a folder, a file, or a Hub repo id (owner/name)")


def hub_download(repo_id: str, variant: str | None = None, revision: str | None = None) -> Path:
    """Fetch only the files an SD 1.x / 2.x diffusers repo needs (configs, tokenizer, one weight file per part);
    the configs first, so that a depth, inpainting, unCLIP, upscaler or SDXL repo is refused before any weight."""
    from huggingface_hub import snapshot_download

    configs = ["model_index.json", "scheduler/scheduler_config.json", "tokenizer/*", "unet/config.json",
               "vae/config.json", "text_encoder/config.json"]
    check_configs(Path(snapshot_download(repo_id, revision=revision, allow_patterns=configs)), repo_id)
    v = f".{variant}" if variant else ""
    # Prefer safetensors; fall back to .bin only for parts that have no safetensors file.
    wanted = [f"{part}/{names[0].format(v=v)}" for part, names in WEIGHT_NAMES.items()]
    folder = Path(snapshot_download(repo_id, revision=revision, allow_patterns=configs + wanted))
    missing = [part for part, names in WEIGHT_NAMES.items() if not (folder / part / names[0].format(v=v)).exists()]
    if missing:
        bins = [f"{part}/{WEIGHT_NAMES[part][1].format(v=v)}" for part in missing]
        folder = Path(snapshot_download(repo_id, revision=revision, allow_patterns=configs + bins))
    return folder
