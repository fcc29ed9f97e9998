"""CLIP text transformer (transformers' CLIPTextModel names): causal, quick-GELU or GELU, final LayerNorm.

ctx = text_encoder(ids [B,77]) is the last hidden state after the final LayerNorm (§2).
SD 2's OpenCLIP ViT-H/14 text tower is the same network with GELU, 1024 wide, 16 heads; SD 2 reads its
penultimate layer through the final LayerNorm, so it is built with the layers up to that one (diffusers' 23-layer
CLIPTextModel; §9.1).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attention import attention


@dataclass(frozen=True)
class CLIPTextConfig:
    """Text encoder sizes; `from_transformers` reads a text_encoder/config.json."""

    vocab_size: int = 49408
    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    max_position_embeddings: int = 77
    layer_norm_eps: float = 1e-5
    hidden_act: str = "quick_gelu"

    @classmethod
    def from_transformers(cls, cfg: dict) -> "CLIPTextConfig":
        """Build from a transformers CLIPTextConfig dict."""
        if cfg.get("hidden_act", "quick_gelu") not in ("quick_gelu", "gelu"):
            raise ValueError(f"unsupported text encoder activation {cfg.get('hidden_act')!r}")
        arch = cfg.get("architectures") or ["CLIPTextModel"]
        if arch[0] not in ("CLIPTextModel", "CLIPTextModelWithProjection"):
            raise ValueError(f"unsupported text encoder {arch[0]!r}")
        return cls(**{k: cfg[k] for k in cls.__dataclass_fields__ if k in cfg})

    def to_transformers(self) -> dict:
        """The transformers config dict for these sizes."""
        return {"architectures": ["CLIPTextModel"], "model_type": "clip_text_model", **self.__dict__}


class CLIPAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x: Tensor, causal: Tensor) -> Tensor:
        return self.out_proj(attention(self.q_proj(x), self.k_proj(x), self.v_proj(x), self.heads, bias=causal))


class CLIPMLP(nn.Module):
    def __init__(self, dim: int, inner: int, act: str):
        super().__init__()
        self.fc1, self.fc2, self.act = nn.Linear(dim, inner), nn.Linear(inner, dim), act

    def forward(self, x: Tensor) -> Tensor:
        h = self.fc1(x)
        h = h * torch.sigmoid(1.702 * h) if self.act == "quick_gelu" else F.gelu(h)
        return self.fc2(h)


class CLIPLayer(nn.Module):
    def __init__(self, cfg: CLIPTextConfig):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.self_attn = CLIPAttention(cfg.hidden_size, cfg.num_attention_heads)
        self.layer_norm2 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.mlp = CLIPMLP(cfg.hidden_size, cfg.intermediate_size, cfg.hidden_act)

    def forward(self, x: Tensor, causal: Tensor) -> Tensor:
        x = x + self.self_attn(self.layer_norm1(x), causal)
        return x + self.mlp(self.layer_norm2(x))


class Embeddings(nn.Module):
    def __init__(self, cfg: CLIPTextConfig):
        super().__init__()
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.position_embedding = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)


class Encoder(nn.Module):
    def __init__(self, cfg: CLIPTextConfig):
        super().__init__()
        self.layers = nn.ModuleList([CLIPLayer(cfg) for _ in range(cfg.num_hidden_layers)])


class TextModel(nn.Module):
    def __init__(self, cfg: CLIPTextConfig):
        super().__init__()
        self.embeddings = Embeddings(cfg)
        self.encoder = Encoder(cfg)
        self.final_layer_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)


class CLIPTextEncoder(nn.Module):
    """ids [B, L] -> last hidden state [B, L, D] after the final LayerNorm."""

    def __init__(self, cfg: CLIPTextConfig):
        super().__init__()
        self.config = cfg
        self.text_model = TextModel(cfg)

    def forward(self, ids: Tensor) -> Tensor:
        """Encode token ids (any length up to max_position_embeddings)."""
        tm, n = self.text_model, ids.shape[1]
        if n > self.config.max_position_embeddings:
            raise ValueError(f"{n} tokens is more than the text encoder's {self.config.max_position_embeddings}")
        pos = torch.arange(n, device=ids.device)
        x = tm.embeddings.token_embedding(ids) + tm.embeddings.position_embedding(pos)[None]
        causal = torch.full((n, n), float("-inf"), device=ids.device, dtype=x.dtype).triu(1)
        for layer in tm.encoder.layers:
            x = layer(x, causal)
        return tm.final_layer_norm(x)
