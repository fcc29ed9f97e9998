"""The eight presets of docs/spec.md §6, and how a preset and the given settings make one EditConfig (§7:
flag > preset > model > built-in default)."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .settings import SETTINGS, EditConfig, canonical, flag, scaled


@dataclass(frozen=True)
class Preset:
    """A §6 row; its SR steps are for 50 steps (scaled by N/50 for other step counts)."""

    name: str
    settings: dict = field(default_factory=dict)

    def config(self, steps: int = 50, **overrides: Any) -> EditConfig:
        """The preset as an EditConfig for `steps` steps; explicit overrides win."""
        s = dict(self.settings)
        if steps != 50 and "sr_steps" in s:
            s["sr_steps"] = scaled(s["sr_steps"], steps)
        return EditConfig(steps=steps, **{**s, **overrides})


def resolve(given: Mapping[str, Any], preset: str | None = None) -> tuple[EditConfig, dict[str, str]]:
    """Flags over the preset over the defaults (§7): the config and each given setting's source (flag / preset)."""
    given = {canonical(k): v for k, v in given.items()}
    unknown = sorted(set(given) - set(SETTINGS))
    if unknown:
        raise ValueError(f"unknown settings {unknown} (settings: {', '.join(SETTINGS)})")
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
        settings = {k: v for k, v in given.items() if k != "steps"}
        cfg = PRESETS[preset].config(steps=given.get("steps", 50), **settings)
        sources = {k: "preset" for k in PRESETS[preset].settings} | {k: "flag" for k in given}
        return cfg, sources
    missing = [flag(k) for k in ("source_prompt", "target_prompt") if k not in given]
    if missing:
        raise ValueError(f"give --preset or {' and '.join(missing)}")
    return EditConfig(**given), {k: "flag" for k in given}


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
