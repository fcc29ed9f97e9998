"""SD 1.x / 2.x UNet (diffusers module names, so a diffusers state dict loads with no renaming).

Transformer blocks get their §2 block index at construction, in execution order
(down 0-5, mid 6, up 7-15 for SD v1 and 2.x); hooks are addressed by it. SD 2 differs only in its config
(§9.3): linear proj_in/proj_out, heads per level, 1024-wide context, float32 attention for 2.1-768.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attention import Attention, AttentionHook, Kind
from .precision import precise_dtype



@dataclass(frozen=True)
class UNetConfig:
    """UNet sizes; `from_diffusers` reads a diffusers unet/config.json."""

    in_channels: int = 4
    out_channels: int = 4
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    down_attention: tuple[bool, ...] = (True, True, True, False)  # per level, from down_block_types
    layers_per_block: int = 2
    heads: tuple[int, ...] = (8, 8, 8, 8)  # per level (SD v1: 8; SD 2: 5, 10, 20, 20; diffusers: attention_head_dim)
    cross_attention_dim: int = 768
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    flip_sin_to_cos: bool = True
    freq_shift: int = 0
    use_linear_projection: bool = False
    sample_size: int = 64
    upcast_attention: bool = False  # §9.3: attention in float32 in a half-precision model (SD 2.1-768)

    @classmethod
    def from_diffusers(cls, cfg: dict) -> "UNetConfig":
        """Build from a diffusers config dict; unsupported features raise ValueError."""
        down = list(cfg.get("down_block_types", ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"]))
        up = list(cfg.get("up_block_types", ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3))
        attn = tuple(t == "CrossAttnDownBlock2D" for t in down)
        if tuple(t == "CrossAttnUpBlock2D" for t in reversed(up)) != attn:
            raise ValueError(f"unsupported UNet: up blocks {up} do not mirror down blocks {down}")
        for t in down + up:
            if t not in ("CrossAttnDownBlock2D", "DownBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"):
                raise ValueError(f"unsupported UNet block type {t!r}")
        bad = {k: cfg[k] for k in ("class_embed_type", "addition_embed_type", "encoder_hid_dim", "time_cond_proj_dim")
               if cfg.get(k) is not None}
        if cfg.get("mid_block_type", "UNetMidBlock2DCrossAttn") != "UNetMidBlock2DCrossAttn":
            bad["mid_block_type"] = cfg["mid_block_type"]
        tl = cfg.get("transformer_layers_per_block", 1)
        if tl not in (1, None) and set(tl if isinstance(tl, (list, tuple)) else [tl]) != {1}:
            bad["transformer_layers_per_block"] = tl
        if isinstance(cfg.get("layers_per_block", 2), (list, tuple)):
            bad["layers_per_block"] = cfg["layers_per_block"]
        if bad:
            raise ValueError(f"unsupported UNet config (not SD 1.x/2.x text-to-image): {bad}")
        levels = len(down)
        # diffusers' `attention_head_dim` is a head COUNT (a misnomer it keeps for old configs; SD 2: 5/10/20/20
        # heads of 64 channels), read as UNet2DConditionModel does: num_attention_heads or attention_head_dim.
        heads = cfg.get("num_attention_heads") or cfg.get("attention_head_dim", 8)
        heads = tuple(heads) if isinstance(heads, (list, tuple)) else (heads,) * levels
        return cls(
            in_channels=cfg.get("in_channels", 4), out_channels=cfg.get("out_channels", 4),
            block_out_channels=tuple(cfg["block_out_channels"]), down_attention=attn,
            layers_per_block=cfg.get("layers_per_block", 2), heads=heads,
            cross_attention_dim=cfg.get("cross_attention_dim", 768), norm_num_groups=cfg.get("norm_num_groups", 32),
            norm_eps=cfg.get("norm_eps", 1e-5), flip_sin_to_cos=cfg.get("flip_sin_to_cos", True),
            freq_shift=cfg.get("freq_shift", 0), use_linear_projection=bool(cfg.get("use_linear_projection", False)),
            sample_size=cfg.get("sample_size", 64), upcast_attention=bool(cfg.get("upcast_attention", False)),
        )

    def to_diffusers(self) -> dict:
        """The diffusers config dict for these sizes."""
        return {
            "_class_name": "UNet2DConditionModel", "in_channels": self.in_channels, "out_channels": self.out_channels,
            "block_out_channels": list(self.block_out_channels), "layers_per_block": self.layers_per_block,
            "down_block_types": ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in self.down_attention],
            "up_block_types": ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(self.down_attention)],
            "attention_head_dim": list(self.heads), "cross_attention_dim": self.cross_attention_dim,
            "norm_num_groups": self.norm_num_groups, "norm_eps": self.norm_eps, "flip_sin_to_cos": self.flip_sin_to_cos,
            "freq_shift": self.freq_shift, "use_linear_projection": self.use_linear_projection,
            "sample_size": self.sample_size, "upcast_attention": self.upcast_attention,
        }


def timestep_embedding(t: Tensor, dim: int, flip_sin_to_cos: bool = True, shift: float = 0.0,
                       dtype: torch.dtype = torch.float32) -> Tensor:
    """Sinusoidal timestep features [B, dim] (at least float32: timesteps up to 999 need the precision)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=dtype, device=t.device) / (half - shift))
    args = t.to(dtype)[:, None] * freqs[None]
    emb = torch.cat([args.sin(), args.cos()], dim=-1)
    return torch.cat([emb[:, half:], emb[:, :half]], dim=-1) if flip_sin_to_cos else emb


class ResnetBlock(nn.Module):
    """Pre-norm residual block; time embedding added after the first conv (temb_dim=0: none, as in the VAE)."""

    def __init__(self, cin: int, cout: int, temb_dim: int, groups: int, eps: float):
        super().__init__()
        # Norms run in the model dtype, no float32 upcast: torch's GroupNorm/LayerNorm kernels already keep their
        # statistics in float32 (bf16 on CPU: within 1 ulp of float32 math, also for a mean of 100 at std 1).
        self.norm1 = nn.GroupNorm(groups, cin, eps=eps)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.time_emb_proj = nn.Linear(temb_dim, cout) if temb_dim else None
        self.norm2 = nn.GroupNorm(groups, cout, eps=eps)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x: Tensor, temb: Tensor | None = None) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        if self.time_emb_proj is not None:
            h = h + self.time_emb_proj(F.silu(temb))[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return (x if self.conv_shortcut is None else self.conv_shortcut(x)) + h


class GEGLU(nn.Module):
    def __init__(self, dim: int, inner: int):
        super().__init__()
        self.proj = nn.Linear(dim, inner * 2)

    def forward(self, x: Tensor) -> Tensor:
        h, gate = self.proj(x).chunk(2, dim=-1)
        return h * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.net = nn.ModuleList([GEGLU(dim, dim * 4), nn.Identity(), nn.Linear(dim * 4, dim)])

    def forward(self, x: Tensor) -> Tensor:
        return self.net[2](self.net[0](x))


class TransformerBlock(nn.Module):
    """Self-attention (attn1), cross-attention (attn2), GEGLU feed-forward; pre-norm residuals."""

    def __init__(self, dim: int, heads: int, context_dim: int, block: int, upcast: bool = False):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(dim, heads, block=block, kind="self", upcast=upcast)
        self.norm2 = nn.LayerNorm(dim)
        self.attn2 = Attention(dim, heads, context_dim, block=block, kind="cross", upcast=upcast)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim)

    def forward(self, x: Tensor, hw: tuple[int, int], context: Tensor, step: int | None) -> Tensor:
        x = x + self.attn1(self.norm1(x), hw, step=step)
        x = x + self.attn2(self.norm2(x), hw, context, step=step)
        return x + self.ff(self.norm3(x))


class Transformer2D(nn.Module):
    """Spatial transformer: GroupNorm, proj_in, one TransformerBlock, proj_out, residual."""

    def __init__(self, dim: int, heads: int, context_dim: int, groups: int, block: int, linear: bool,
                 upcast: bool = False):
        super().__init__()
        self.linear = linear
        self.norm = nn.GroupNorm(groups, dim, eps=1e-6)
        self.proj_in = nn.Linear(dim, dim) if linear else nn.Conv2d(dim, dim, 1)
        self.transformer_blocks = nn.ModuleList([TransformerBlock(dim, heads, context_dim, block, upcast)])
        self.proj_out = nn.Linear(dim, dim) if linear else nn.Conv2d(dim, dim, 1)

    def forward(self, x: Tensor, context: Tensor, step: int | None) -> Tensor:
        b, c, h, w = x.shape
        y = self.norm(x)
        if not self.linear:
            y = self.proj_in(y)
        y = y.permute(0, 2, 3, 1).reshape(b, h * w, c)
        if self.linear:
            y = self.proj_in(y)
        y = self.transformer_blocks[0](y, (h, w), context, step)
        if self.linear:
            y = self.proj_out(y)
        y = y.reshape(b, h, w, c).permute(0, 3, 1, 2)
        if not self.linear:
            y = self.proj_out(y)
        return x + y


class Downsample(nn.Module):
    def __init__(self, ch: int, pad: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=pad)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x if self.conv.padding[0] else F.pad(x, (0, 1, 0, 1)))  # VAE pads right/bottom only


class Upsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: Tensor, size: tuple[int, int] | None = None) -> Tensor:
        return self.conv(F.interpolate(x, size=size, scale_factor=None if size else 2.0, mode="nearest"))


class Level(nn.Module):
    """One down or up block: resnets, optional attentions, optional down/upsampler."""

    def __init__(self, resnets: list[nn.Module], attentions: list[nn.Module] | None, sampler: nn.Module | None,
                 up: bool):
        super().__init__()
        self.resnets = nn.ModuleList(resnets)
        self.attentions = nn.ModuleList(attentions) if attentions else None
        if sampler is not None:
            setattr(self, "upsamplers" if up else "downsamplers", nn.ModuleList([sampler]))


class MidBlock(nn.Module):
    def __init__(self, resnets: list[nn.Module], attention: nn.Module):
        super().__init__()
        self.resnets = nn.ModuleList(resnets)
        self.attentions = nn.ModuleList([attention])


class TimestepEmbedding(nn.Module):
    def __init__(self, cin: int, dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(cin, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))


class UNet(nn.Module):
    """eps = unet(x [B,4,h,w], t (int or [B]), context [B,77,D], step=i)."""

    def __init__(self, cfg: UNetConfig):
        super().__init__()
        self.config = cfg
        ch, n, g, eps = cfg.block_out_channels, cfg.layers_per_block, cfg.norm_num_groups, cfg.norm_eps
        temb = ch[0] * 4
        self.conv_in = nn.Conv2d(cfg.in_channels, ch[0], 3, padding=1)
        self.time_embedding = TimestepEmbedding(ch[0], temb)
        counter = iter(range(10**6))  # §2 block index, assigned in execution order

        def xattn(c: int, level: int) -> Transformer2D:
            return Transformer2D(c, cfg.heads[level], cfg.cross_attention_dim, g, next(counter),
                                 cfg.use_linear_projection, cfg.upcast_attention)

        self.down_blocks = nn.ModuleList()
        skips, cin = [ch[0]], ch[0]
        for i, c in enumerate(ch):
            last = i == len(ch) - 1
            res, att = [], []
            for j in range(n):
                res.append(ResnetBlock(cin, c, temb, g, eps))
                cin = c
                skips.append(c)
                if cfg.down_attention[i]:
                    att.append(xattn(c, i))
            self.down_blocks.append(Level(res, att, None if last else Downsample(c), up=False))
            if not last:
                skips.append(c)
        self.mid_block = MidBlock([ResnetBlock(ch[-1], ch[-1], temb, g, eps)], xattn(ch[-1], len(ch) - 1))
        self.mid_block.resnets.append(ResnetBlock(ch[-1], ch[-1], temb, g, eps))
        self.up_blocks = nn.ModuleList()
        for i, c in enumerate(reversed(ch)):
            level = len(ch) - 1 - i
            res, att = [], []
            for j in range(n + 1):
                res.append(ResnetBlock(cin + skips.pop(), c, temb, g, eps))
                cin = c
                if cfg.down_attention[level]:
                    att.append(xattn(c, level))
            self.up_blocks.append(Level(res, att, Upsample(c) if level > 0 else None, up=True))
        self.conv_norm_out = nn.GroupNorm(g, ch[0], eps=eps)
        self.conv_out = nn.Conv2d(ch[0], cfg.out_channels, 3, padding=1)

    # ---- attention hooks -------------------------------------------------------------------
    def attention_layers(self) -> dict[tuple[int, Kind], Attention]:
        """Every attention layer by (§2 block index, "self"/"cross")."""
        return {(m.block, m.kind): m for m in self.modules() if isinstance(m, Attention)}

    def block_levels(self) -> dict[int, int]:
        """§2 block index -> resolution level of its maps (0: the latent size, k: latent / 2^k)."""
        n = len(self.down_blocks)
        parts = [*enumerate(self.down_blocks), (n - 1, self.mid_block),
                 *((n - 1 - i, b) for i, b in enumerate(self.up_blocks))]
        return {t.transformer_blocks[0].attn1.block: level for level, b in parts for t in (b.attentions or [])}

    def set_attn_hook(self, hook: AttentionHook | None, blocks: range | list[int] | None = None,
                      kinds: tuple[Kind, ...] = ("self", "cross")) -> None:
        """Set (or with None, remove) `hook` on the chosen layers (default: all of them)."""
        for (block, kind), layer in self.attention_layers().items():
            if (blocks is None or block in blocks) and kind in kinds:
                layer.hook = hook

    @contextlib.contextmanager
    def hooked(self, hook: AttentionHook, blocks: range | list[int] | None = None,
               kinds: tuple[Kind, ...] = ("self", "cross")):
        """Context manager: `hook` on the chosen layers inside, plain model after."""
        self.set_attn_hook(hook, blocks, kinds)
        try:
            yield self
        finally:
            self.set_attn_hook(None)

    def set_fused(self, fused: bool) -> None:
        """Use the fused (True) or explicit (False) attention path in every layer without probabilities."""
        for layer in self.attention_layers().values():
            layer.fused = fused

    # ---- forward ---------------------------------------------------------------------------
    def forward(self, x: Tensor, t: int | Tensor, context: Tensor, step: int | None = None) -> Tensor:
        """Predict the noise eps; `step` is handed to the attention hooks."""
        cfg = self.config
        t = torch.as_tensor(t, device=x.device).reshape(-1).expand(x.shape[0])
        emb = timestep_embedding(t, cfg.block_out_channels[0], cfg.flip_sin_to_cos, cfg.freq_shift,
                                 precise_dtype(x.dtype))
        temb = self.time_embedding(emb.to(x.dtype))
        h = self.conv_in(x)
        skips = [h]
        for blk in self.down_blocks:
            for j, res in enumerate(blk.resnets):
                h = res(h, temb)
                if blk.attentions is not None:
                    h = blk.attentions[j](h, context, step)
                skips.append(h)
            if hasattr(blk, "downsamplers"):
                h = blk.downsamplers[0](h)
                skips.append(h)
        h = self.mid_block.resnets[0](h, temb)
        h = self.mid_block.attentions[0](h, context, step)
        h = self.mid_block.resnets[1](h, temb)
        for blk in self.up_blocks:
            for j, res in enumerate(blk.resnets):
                h = res(torch.cat([h, skips.pop()], dim=1), temb)
                if blk.attentions is not None:
                    h = blk.attentions[j](h, context, step)
            if hasattr(blk, "upsamplers"):
                h = blk.upsamplers[0](h, size=skips[-1].shape[-2:])
        return self.conv_out(F.silu(self.conv_norm_out(h)))

