"""Refusing what is not an SD 1.x / 2.x text-to-image model, by name, before any weight is read (§9.5).

Each check reads only a pipeline class name, a UNet config or the keys and shapes of a single file, and raises
UnsupportedCheckpoint with one line that says what the checkpoint is and what is supported.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import NoReturn

from .checkpoint import UnsupportedCheckpoint

SUPPORTED = "supported: SD 1.x and SD 2.x text-to-image (2.0/2.1: 512 epsilon base, 768 v-prediction)"
SUPPORTED_PIPELINES = {"StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline", "DiffusionPipeline"}
PIPELINES = {
    "StableDiffusionDepth2ImgPipeline": "an SD 2 depth-to-image model",
    "StableDiffusionInpaintPipeline": "an inpainting model",
    "StableDiffusionInpaintPipelineLegacy": "an inpainting model",
    "StableUnCLIPPipeline": "an SD 2.1 unCLIP model",
    "StableUnCLIPImg2ImgPipeline": "an SD 2.1 unCLIP model",
    "StableDiffusionUpscalePipeline": "the SD x4 upscaler",
    "StableDiffusionLatentUpscalePipeline": "the SD x2 latent upscaler",
    "StableDiffusionXLPipeline": "an SDXL model",
    "StableDiffusionXLImg2ImgPipeline": "an SDXL model",
    "StableDiffusionXLInpaintPipeline": "an SDXL inpainting model",
    "StableDiffusion3Pipeline": "an SD 3 model",
}
# UNet input channels that name a variant (text-to-image has 4): latents + depth, + mask and masked image,
# + the low-resolution image.
IN_CHANNELS = {5: "an SD 2 depth-to-image model", 9: "an inpainting model", 7: "the SD x4 upscaler"}
LDM_UNET = "model.diffusion_model."


def refuse(where: str, what: str, evidence: str) -> NoReturn:
    """Raise the one-line refusal."""
    raise UnsupportedCheckpoint(f"{where} is {what} ({evidence}); {SUPPORTED}")


def check_pipeline(class_name: str | None, where: str) -> None:
    """A diffusers model_index.json `_class_name` must be a text-to-image SD pipeline."""
    if class_name in SUPPORTED_PIPELINES:
        return
    refuse(where, PIPELINES.get(class_name, "not a Stable Diffusion text-to-image pipeline"), f"{class_name}")


def check_unet_config(cfg: dict, where: str) -> None:
    """A diffusers unet/config.json must be a text-to-image UNet: 4 input channels, no class or added embedding."""
    if cfg.get("addition_embed_type") is not None:
        refuse(where, "an SDXL-style model", f"UNet addition_embed_type {cfg['addition_embed_type']!r}")
    if cfg.get("in_channels", 4) in IN_CHANNELS:
        refuse(where, IN_CHANNELS[cfg["in_channels"]], f"UNet with {cfg['in_channels']} input channels")
    if cfg.get("class_embed_type") is not None:
        refuse(where, "an unCLIP model", f"UNet class_embed_type {cfg['class_embed_type']!r}")
    if cfg.get("num_class_embeds") is not None:
        refuse(where, "the SD x4 upscaler", f"UNet num_class_embeds {cfg['num_class_embeds']}")


def check_ldm_keys(keys: list[str], shape: Callable[[str], tuple[int, ...]], where: str) -> None:
    """An LDM single file's keys must be a text-to-image model's: refuse SDXL, depth, inpainting, unCLIP, upscaler."""
    def has(prefix: str) -> bool:
        return any(k.startswith(prefix) for k in keys)

    if has("conditioner.embedders."):
        refuse(where, "an SDXL model", "conditioner.embedders.*: two text encoders")
    if has("depth_model."):
        refuse(where, "an SD 2 depth-to-image model", "depth_model.*")
    if has("low_scale_model."):
        refuse(where, "the SD x4 upscaler", "low_scale_model.*")
    if has("noise_augmentor.") or has("embedder."):
        refuse(where, "an SD 2.1 unCLIP model", "noise_augmentor.* / embedder.*: image embedding")
    conv_in = LDM_UNET + "input_blocks.0.0.weight"
    if conv_in in keys and len(shape(conv_in)) == 4 and shape(conv_in)[1] in IN_CHANNELS:
        refuse(where, IN_CHANNELS[shape(conv_in)[1]], f"UNet with {shape(conv_in)[1]} input channels")
    if has(LDM_UNET + "label_emb."):
        refuse(where, "a class-conditioned model (unCLIP or SDXL)", "UNet label_emb.*")
