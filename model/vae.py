"""SD v1 VAE (AutoencoderKL, diffusers module names). encode -> posterior mean (§2: no sampling)."""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from .attention import attention
from .unet import Downsample, Level, ResnetBlock, Upsample


@dataclass(frozen=True)
class VAEConfig:
    """VAE sizes; `from_diffusers` reads a diffusers vae/config.json."""

    in_channels: int = 3
    out_channels: int = 3
    latent_channels: int = 4
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2
    norm_num_groups: int = 32
    scaling_factor: float = 0.18215

    @classmethod
    def from_diffusers(cls, cfg: dict) -> "VAEConfig":
        """Build from a diffusers AutoencoderKL config dict."""
        for key in ("down_block_types", "up_block_types"):
            kinds = set(cfg.get(key, []))
            if kinds - {"DownEncoderBlock2D", "UpDecoderBlock2D"}:
                raise ValueError(f"unsupported VAE {key}: {sorted(kinds)}")
        if cfg.get("latents_mean") is not None or cfg.get("shift_factor") not in (None, 0, 0.0):
            raise ValueError("unsupported VAE config (latents_mean/shift_factor are not SD v1)")
        return cls(
            in_channels=cfg.get("in_channels", 3), out_channels=cfg.get("out_channels", 3),
            latent_channels=cfg.get("latent_channels", 4), block_out_channels=tuple(cfg["block_out_channels"]),
            layers_per_block=cfg.get("layers_per_block", 2), norm_num_groups=cfg.get("norm_num_groups", 32),
            scaling_factor=cfg.get("scaling_factor", 0.18215),
        )

    def to_diffusers(self) -> dict:
        """The diffusers config dict for these sizes."""
        n = len(self.block_out_channels)
        return {
            "_class_name": "AutoencoderKL", "in_channels": self.in_channels, "out_channels": self.out_channels,
            "latent_channels": self.latent_channels, "block_out_channels": list(self.block_out_channels),
            "down_block_types": ["DownEncoderBlock2D"] * n, "up_block_types": ["UpDecoderBlock2D"] * n,
            "layers_per_block": self.layers_per_block, "norm_num_groups": self.norm_num_groups,
            "scaling_factor": self.scaling_factor, "act_fn": "silu",
        }


class VAEAttention(nn.Module):
    """Single-head spatial self-attention with its own GroupNorm and residual."""

    def __init__(self, ch: int, groups: int):
        super().__init__()
        self.group_norm = nn.GroupNorm(groups, ch, eps=1e-6)
        self.to_q, self.to_k, self.to_v = nn.Linear(ch, ch), nn.Linear(ch, ch), nn.Linear(ch, ch)
        self.to_out = nn.ModuleList([nn.Linear(ch, ch)])

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        y = self.group_norm(x).flatten(2).transpose(1, 2)
        y = self.to_out[0](attention(self.to_q(y), self.to_k(y), self.to_v(y), heads=1))
        return x + y.transpose(1, 2).reshape(b, c, h, w)


class VAEMid(nn.Module):
    def __init__(self, ch: int, groups: int):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock(ch, ch, 0, groups, 1e-6) for _ in range(2)])
        self.attentions = nn.ModuleList([VAEAttention(ch, groups)])

    def forward(self, x: Tensor) -> Tensor:
        return self.resnets[1](self.attentions[0](self.resnets[0](x)))


class Encoder(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        ch, g = cfg.block_out_channels, cfg.norm_num_groups
        self.conv_in = nn.Conv2d(cfg.in_channels, ch[0], 3, padding=1)
        self.down_blocks = nn.ModuleList()
        cin = ch[0]
        for i, c in enumerate(ch):
            res = [ResnetBlock(cin if j == 0 else c, c, 0, g, 1e-6) for j in range(cfg.layers_per_block)]
            self.down_blocks.append(Level(res, None, Downsample(c, pad=0) if i < len(ch) - 1 else None, up=False))
            cin = c
        self.mid_block = VAEMid(ch[-1], g)
        self.conv_norm_out = nn.GroupNorm(g, ch[-1], eps=1e-6)
        self.conv_out = nn.Conv2d(ch[-1], 2 * cfg.latent_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)
        for blk in self.down_blocks:
            for res in blk.resnets:
                h = res(h)
            if hasattr(blk, "downsamplers"):
                h = blk.downsamplers[0](h)
        return self.conv_out(F.silu(self.conv_norm_out(self.mid_block(h))))


class Decoder(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        ch, g = tuple(reversed(cfg.block_out_channels)), cfg.norm_num_groups
        self.conv_in = nn.Conv2d(cfg.latent_channels, ch[0], 3, padding=1)
        self.mid_block = VAEMid(ch[0], g)
        self.up_blocks = nn.ModuleList()
        cin = ch[0]
        for i, c in enumerate(ch):
            res = [ResnetBlock(cin if j == 0 else c, c, 0, g, 1e-6) for j in range(cfg.layers_per_block + 1)]
            self.up_blocks.append(Level(res, None, Upsample(c) if i < len(ch) - 1 else None, up=True))
            cin = c
        self.conv_norm_out = nn.GroupNorm(g, ch[-1], eps=1e-6)
        self.conv_out = nn.Conv2d(ch[-1], cfg.out_channels, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        h = self.mid_block(self.conv_in(z))
        for blk in self.up_blocks:
            for res in blk.resnets:
                h = res(h)
            if hasattr(blk, "upsamplers"):
                h = blk.upsamplers[0](h)
        return self.conv_out(F.silu(self.conv_norm_out(h)))


class VAE(nn.Module):
    """z = vae.encode(img in [-1,1]) is the unscaled posterior mean; img = vae.decode(z)."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.config = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quant_conv = nn.Conv2d(2 * cfg.latent_channels, 2 * cfg.latent_channels, 1)
        self.post_quant_conv = nn.Conv2d(cfg.latent_channels, cfg.latent_channels, 1)

    def encode(self, img: Tensor) -> Tensor:
        """[B,3,H,W] in [-1,1] (H, W multiples of 8) -> posterior mean [B,4,H/8,W/8] (not scaled)."""
        f = 2 ** (len(self.config.block_out_channels) - 1)
        if img.ndim != 4 or img.shape[1] != self.config.in_channels or img.shape[2] % f or img.shape[3] % f:
            raise ValueError(f"VAE.encode wants [B,{self.config.in_channels},H,W] with H, W multiples of {f}; "
                             f"got {tuple(img.shape)}")
        moments = self.quant_conv(self.encoder(img))
        return moments[:, : self.config.latent_channels]

    def decode(self, z: Tensor) -> Tensor:
        """Unscaled latents [B,4,h,w] -> images [B,3,8h,8w], roughly in [-1,1]."""
        return self.decoder(self.post_quant_conv(z))
