"""SD 2's OpenCLIP text tower in an LDM single file (`cond_stage_model.model.*`) -> transformers' CLIPTextModel names.

§9.1. The layout (as open_clip saves it; diffusers' convert_open_clip_checkpoint reads the same):
`token_embedding.weight`, `positional_embedding`, `transformer.resblocks.{i}.{ln_1, attn.in_proj_weight/bias
(q, k, v stacked), attn.out_proj, ln_2, mlp.c_fc, mlp.c_proj}`, `ln_final`, and CLIP's contrastive head
`text_projection` (+ `logit_scale`), which SD 2 never uses. SD 2 reads the penultimate layer through ln_final:
a released file holds the whole tower (24 layers with text_projection), so its last layer is ignored; a file
written from a diffusers model holds the 23 layers SD 2 uses and no text_projection, so nothing is ignored.
"""
from __future__ import annotations

import re
from collections.abc import Callable

from torch import Tensor

from model import CLIPTextConfig

OPENCLIP = "cond_stage_model.model."
TOP = {"token_embedding.weight": "text_model.embeddings.token_embedding.weight",
       "positional_embedding": "text_model.embeddings.position_embedding.weight",
       "ln_final.weight": "text_model.final_layer_norm.weight", "ln_final.bias": "text_model.final_layer_norm.bias"}
LAYER = [("ln_1.", "layer_norm1."), ("ln_2.", "layer_norm2."), ("attn.out_proj.", "self_attn.out_proj."),
         ("mlp.c_fc.", "mlp.fc1."), ("mlp.c_proj.", "mlp.fc2.")]
FUSED = {"attn.in_proj_weight": "self_attn.{}_proj.weight", "attn.in_proj_bias": "self_attn.{}_proj.bias"}
HEAD = ("text_projection", "logit_scale")  # the contrastive head: ignored with the unused last layer
# an arange buffer, not a weight, in files written from older diffusers/transformers models
POSITION_IDS = "transformer.text_model.embeddings.position_ids"
_LAYER_KEY = re.compile(r"^transformer\.resblocks\.(\d+)\.(.+)$")


def openclip_names(keys: list[str]) -> tuple[dict[str, str], list[str], int]:
    """(module name -> file key, the file keys deliberately ignored, number of layers in the file).

    Keys that fit nowhere keep their own name, so that strict loading lists them as unexpected.
    """
    sub = [k[len(OPENCLIP):] for k in keys if k.startswith(OPENCLIP)]
    layers = sorted({int(m.group(1)) for k in sub if (m := _LAYER_KEY.match(k))})
    whole_tower = "text_projection" in sub  # see the module doc
    dropped = layers[-1] if whole_tower and layers else None
    names: dict[str, str] = {}
    ignored: list[str] = []
    for k in sub:
        key, m = OPENCLIP + k, _LAYER_KEY.match(k)
        if k in TOP:
            names[TOP[k]] = key
        elif (m and int(m.group(1)) == dropped) or (whole_tower and k in HEAD) or k == POSITION_IDS:
            ignored.append(key)
        elif m and m.group(2) in FUSED:
            for part in "qkv":
                names[f"text_model.encoder.layers.{m.group(1)}." + FUSED[m.group(2)].format(part)] = key
        elif m:
            inner = m.group(2)
            old, new = next(((o, n) for o, n in LAYER if inner.startswith(o)), ("", ""))
            names[f"text_model.encoder.layers.{m.group(1)}.{new}{inner[len(old):]}" if old else key] = key
        else:
            names[key] = key
    return names, ignored, len(layers)


def split_fused(name: str, t: Tensor) -> Tensor:
    """The q, k or v third of a stacked in_proj weight/bias for module parameter `name` (copied, so that the
    parameter does not keep the whole stack alive); other tensors as they are."""
    m = re.search(r"\.self_attn\.([qkv])_proj\.", name)
    if m is None:
        return t
    d = t.shape[0] // 3
    i = "qkv".index(m.group(1))
    return t[i * d:(i + 1) * d].clone()


def openclip_config(names: dict[str, str], shape: Callable[[str], tuple[int, ...]]) -> CLIPTextConfig:
    """The text encoder's sizes from the tensor shapes: GELU (ViT-H/14 is not a quick-GELU OpenAI model) and
    heads = width / 64, open_clip's text-tower rule."""
    vocab, width = shape(names["text_model.embeddings.token_embedding.weight"])
    layers = {int(m.group(1)) for n in names if (m := re.match(r"text_model\.encoder\.layers\.(\d+)\.", n))}
    return CLIPTextConfig(
        vocab_size=vocab, hidden_size=width, num_attention_heads=width // 64, num_hidden_layers=len(layers),
        max_position_embeddings=shape(names["text_model.embeddings.position_embedding.weight"])[0],
        intermediate_size=shape(names["text_model.encoder.layers.0.mlp.fc1.weight"])[0], hidden_act="gelu")

