"""The SD 1.x / 2.x model stack: tokenizer, text encoder, VAE, UNet (§2, §9)."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from .attention import AttentionHook, AttnSite, attention, attention_probs
from .clip import CLIPTextConfig, CLIPTextEncoder
from .precision import precise_dtype
from .tokenizer import CLIPTokenizer
from .unet import UNet, UNetConfig
from .vae import VAE, VAEConfig

__all__ = [
    "AttentionHook", "AttnSite", "attention", "attention_probs", "CLIPTextConfig", "CLIPTextEncoder",
    "CLIPTokenizer", "UNet", "UNetConfig", "VAE", "VAEConfig", "StableDiffusion", "precise_dtype", "FAMILIES",
    "PREDICTION_TYPES",
]

FAMILIES = ("sd1", "sd2")  # sd2: OpenCLIP ViT-H text encoder, §9
PREDICTION_TYPES = ("epsilon", "v_prediction")  # what the UNet predicts, §9.4


@dataclass
class StableDiffusion:
    """A loaded SD 1.x / 2.x model: the four parts, the latent scaling factor, where it came from, its family
    ("sd1" | "sd2") and what its UNet predicts ("epsilon" | "v_prediction", §9.4)."""

    tokenizer: CLIPTokenizer
    text_encoder: CLIPTextEncoder
    unet: UNet
    vae: VAE
    scaling_factor: float = 0.18215
    scheduler_config: dict | None = None  # a diffusers scheduler_config.json, when the source has one
    source: str = ""
    extra: dict = field(default_factory=dict)
    family: str = "sd1"
    prediction_type: str = "epsilon"

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"family must be one of {FAMILIES}, got {self.family!r}")
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {self.prediction_type!r}")

    @property
    def device(self) -> torch.device:
        return self.unet.conv_in.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.conv_in.weight.dtype

    @property
    def precise_dtype(self) -> torch.dtype:
        """dtype of latents, the DDIM update, P2P edits, masks and maps (float64 in the float64 mode)."""
        return precise_dtype(self.dtype)

    @property
    def native_size(self) -> int:
        """The image side the UNet was trained at: sample_size x the VAE factor (SD v1: 64 x 8 = 512; 2.x-v: 768)."""
        return self.unet.config.sample_size * 2 ** (len(self.vae.config.block_out_channels) - 1)

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> Tensor:
        """Prompts -> text-encoder context [B, 77, D] on the model's device and dtype."""
        return self.text_encoder(self.tokenizer(prompts).to(self.device))
