"""Edit settings (SPEC §4) and the eight reference presets (SPEC §6), as data."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

Steps = float | tuple[float, float]
# SPEC §4.3: the cross-attention layers Local Blend and mask_t read, the latent/4 level (16² maps at 512²).
# A model whose words find their objects at another level (measured for the demo model) can name other blocks.
BLEND_BLOCKS = (4, 5, 7, 8, 9)


@dataclass(frozen=True)
class EditConfig:
    """Every setting of one edit. Step ranges are step indices [start, end) of `steps`."""

    source_prompt: str
    target_prompt: str
    target_words: tuple[str, ...] = ()                  # words of the target prompt that define mask_t (SPEC §4.4)
    mode: Literal["replace", "refine"] = "refine"       # P2P edit (SPEC §4.1)
    cross_replace_steps: Steps | dict = 0.8
    self_replace_steps: Steps = 0.5
    reweight: tuple[tuple[str, float], ...] = ()        # (target word, factor) pairs
    blend_words: tuple[tuple[str, ...], tuple[str, ...]] | None = None  # (source words, target words)
    substruct_words: tuple[tuple[str, ...], tuple[str, ...]] | None = None
    blend_th: tuple[float, float] = (0.3, 0.3)
    start_blend: float = 0.2
    map_blocks: tuple[int, ...] = BLEND_BLOCKS          # cross-attention maps Local Blend and mask_t read
    thres: float = 0.5                                  # SR-attn mask threshold
    sr_steps: tuple[int, int] = (4, 50)
    sr_layers: tuple[int, int] = (10, 16)               # SPEC §2 block indices [l0, l1)
    masks: Literal["both", "s", "t", "none"] = "both"   # ablations (SPEC §4.4)
    interp: Literal["nearest", "bilinear"] = "bilinear"
    use_reference: bool = True                          # False: the P2P baseline (no SR-attn)
    reference_prompt: str = ""
    reference_words: tuple[str, ...] = ()              # reference-prompt words an auto mask_s reads (issue 19)
    reference_thres: float = 0.5                        # threshold of the normalised auto mask_s map
    steps: int = 50
    guidance: float = 7.5
    inversion_guidance: float = 1.0
    size: int | None = None                             # working long side, a multiple of 64 (None: the model's native size)
    feature_dtype: str | None = None                    # dtype of the kept reference K/V (None: the model's)

    def replace(self, **changes) -> "EditConfig":
        """A copy with some settings changed."""
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class Preset:
    """A SPEC §6 row; its step ranges are for 50 steps (scaled by N/50 for other step counts)."""

    name: str
    settings: dict = field(default_factory=dict)

    def config(self, steps: int = 50, **overrides) -> EditConfig:
        """The preset as an EditConfig for `steps` steps; explicit overrides win."""
        s = dict(self.settings)
        if steps != 50 and "sr_steps" in s:
            s["sr_steps"] = tuple(round(v * steps / 50) for v in s["sr_steps"])
        return EditConfig(steps=steps, **{**s, **overrides})


_MIRROR_SRC = "a cat sitting next to a mirror"
_HUMAN_SRC = "A person, wearing white dress, sitting on the bench, reading a book"
PRESETS: dict[str, Preset] = {p.name: p for p in [
    Preset("mirror-tiger", dict(
        source_prompt=_MIRROR_SRC, target_prompt="a tiger sitting next to a mirror", mode="replace",
        self_replace_steps=0.5, blend_words=(("cat",), ("tiger",)), target_words=("tiger",), thres=0.5,
        sr_steps=(4, 50), sr_layers=(10, 16), masks="both", interp="bilinear")),
    Preset("mirror-dog13", dict(
        source_prompt=_MIRROR_SRC, target_prompt="a dog sitting next to a mirror", mode="replace",
        self_replace_steps=0.6, blend_words=(("cat",), ("dog",)), target_words=("dog",), thres=0.5,
        sr_steps=(4, 50), sr_layers=(10, 16), masks="both", interp="nearest")),
    Preset("dogshirt-bed", dict(
        source_prompt="two dogs standing on a board, lake behind",
        target_prompt="two dogs standing on a mattress, in the bedroom", mode="refine", self_replace_steps=0.5,
        blend_words=(("board", "lake"), ("mattress", "bedroom")), target_words=("mattress", "bedroom"), thres=0.2,
        sr_steps=(8, 50), sr_layers=(10, 16), masks="both", interp="bilinear")),
    Preset("dogshirt-shirt", dict(
        source_prompt="two dogs wearing red clothes", target_prompt="two dogs wearing blue clothes", mode="replace",
        self_replace_steps=0.8, blend_words=(("red", "clothes"), ("blue",)), target_words=("blue",), thres=0.3,
        sr_steps=(4, 50), sr_layers=(10, 16), masks="t", interp="bilinear")),
    Preset("human6-dress", dict(
        source_prompt=_HUMAN_SRC,
        target_prompt="A person, wearing colorful plaid dress, sitting on the bench, reading a book", mode="refine",
        self_replace_steps=0.6, blend_words=(("white", "dress"), ("colorful", "plaid", "dress")),
        target_words=("colorful", "plaid", "dress"), thres=0.32, sr_steps=(30, 50), sr_layers=(14, 16),
        masks="both", interp="bilinear")),
    Preset("toy_rabbit-cake", dict(
        source_prompt="A human-like toy is sitting on a cushion",
        target_prompt="A human-like toy is sitting on a birthday cake", mode="refine", self_replace_steps=0.6,
        blend_words=(("cushion",), ("cake",)), substruct_words=(("toy",), ("toy",)), blend_th=(0.3, 0.45),
        target_words=("cake",), thres=0.3, sr_steps=(4, 50), sr_layers=(10, 16), masks="both", interp="bilinear")),
    Preset("vase-vase", dict(
        source_prompt="a vase of flowers", target_prompt="a vase of flowers", mode="refine", reweight=(("vase", 2.0),),
        self_replace_steps=0.4, blend_words=(("vase",), ("vase",)), target_words=("vase",), thres=0.45,
        sr_steps=(4, 50), sr_layers=(10, 16), masks="both", interp="bilinear")),
    Preset("vase-zhi", dict(
        source_prompt="a vase of carnation", target_prompt="a vase of flowers", mode="refine", self_replace_steps=0.5,
        blend_words=(("carnation",), ("flowers",)), target_words=("flowers",), thres=0.5, sr_steps=(45, 50),
        sr_layers=(10, 16), masks="both", interp="bilinear")),
]}
