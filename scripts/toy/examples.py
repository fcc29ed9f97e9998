"""The demo model's examples, drawn by the scene code, and how to run them (SHIPPED: those in assets/examples).

Each example is a source scene, its references (scenes, each with the target words it is bound to, a drawn or
"auto" mask, a plain or busy background) and the edit's settings as explicit EditConfig fields; `write` draws the
folder's PNGs and edit.json (the CLI flags), `config` / `references` give the same edit to `specref.edit`.
The model's own settings (the level its words are read at, specref.json's "edit_defaults") are applied by the
editor itself (§8.4); `model_defaults` writes them into the configs explicitly, so that `evaluate.py --map-blocks`
can measure a model at another level.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

import specref
from specref.settings import EditConfig
from toy.scenes import COLOURS, TEXTURES, Scene, draw_objects

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "assets" / "examples"
DEFAULT_MODEL = ROOT / "assets" / "toy-sd"


OVERRIDE: dict = {}  # evaluate.py --map-blocks: settings that replace the model's own (to measure an older model)


def model_defaults(model: str | Path | None = None) -> dict:
    """The model folder's specref.json "edit_defaults" as EditConfig fields (tuples for lists), with evaluate.py's
    overrides; {} if it has none."""
    path = Path(model or DEFAULT_MODEL) / "specref.json"
    own = json.loads(path.read_text()).get("edit_defaults", {}) if path.is_file() else {}
    return {**{k: tuple(v) if isinstance(v, list) else v for k, v in own.items()}, **OVERRIDE}


@dataclass(frozen=True)
class Ref:
    """A reference: its scene, the target words it is bound to (`--for`; () = the edit's target words), an "auto"
    mask (from its own cross-attention to its shape word, with its caption as reference prompt) or the drawn one,
    and a busy background (random 8-px blocks of two colours; the seed) instead of its plain one."""

    scene: Scene
    words: tuple[str, ...] = ()
    auto: bool = False
    busy: int | None = None

    def image(self, size: int = 128) -> tuple[Image.Image, np.ndarray]:
        """(RGB image, the object's drawn mask, bool)."""
        img, masks = draw_objects(self.scene, size)
        mask = np.asarray(masks[0]) > 127
        if self.busy is None:
            return img, mask
        return Image.fromarray(np.where(mask[..., None], np.asarray(img), busy_blocks(self.scene.colour, size,
                                                                                     self.busy))), mask

    def prompt(self) -> str | None:
        """The reference prompt of an auto mask (its caption without the background), else None (the config's)."""
        return self.scene.caption(background=False) if self.auto else None

    def reference(self, size: int = 128) -> specref.Reference:
        img, mask = self.image(size)
        return specref.Reference(img, mask="auto" if self.auto else mask, target_words=self.words,
                                 prompt=self.prompt(),
                                 auto_mask_words=(self.scene.shape,) if self.auto else None)


BUSY_COLOURS = ("green", "blue", "purple", "orange", "red")


def busy_blocks(avoid: str, size: int, seed: int) -> np.ndarray:
    """A busy background: random 8-px blocks of the first two of BUSY_COLOURS that are not `avoid`, uint8 [H, W, 3]."""
    a, b = [np.array(COLOURS[c]) for c in BUSY_COLOURS if c != avoid][:2]
    blocks = np.random.default_rng(seed).integers(0, 2, (size // 8, size // 8)).repeat(8, 0).repeat(8, 1)
    return np.where(blocks[..., None] == 1, a, b).astype(np.uint8)


@dataclass(frozen=True)
class Example:
    """One shipped example: source scene, references, the source objects each reference edits (by index, in the
    references' order), the edit's EditConfig fields, and what it does."""

    name: str
    source: Scene
    refs: tuple[Ref, ...]
    edited: tuple[int, ...]
    fields: tuple[tuple[str, object], ...]
    caption: str

    @property
    def folder(self) -> Path:
        return EXAMPLES / self.name

    def config(self, steps: int = 50, model: str | Path | None = None, **changes: object) -> EditConfig:
        """The edit as an EditConfig: its fields, SR-attn from step 10 of 50 (scaled), the model's own settings."""
        return EditConfig(**{**dict(self.fields), "steps": steps, "sr_steps": (round(10 * steps / 50), steps),
                             **model_defaults(model), **changes})

    def references(self, size: int = 128, refs: tuple[Ref, ...] | None = None) -> list[specref.Reference]:
        return [r.reference(size) for r in (refs or self.refs)]

    def with_refs(self, refs: tuple[Ref, ...]) -> "Example":
        """The same edit with other references (a control)."""
        return Example(self.name, self.source, refs, self.edited, self.fields, self.caption)


def flags(fields: dict) -> list[str]:
    """EditConfig fields -> `python -m specref edit` flags."""
    out: list[str] = []
    for name, value in fields.items():
        flag = "--" + name.replace("_", "-")
        if name == "blend_words":
            out += [flag, ";".join(",".join(ws) for ws in value)]
        elif name in ("target_words", "auto_mask_words", "map_blocks"):
            out += [flag, ",".join(map(str, value))]
        elif name in ("sr_layers", "sr_steps"):
            out += [flag, f"{value[0]}-{value[1]}"]
        elif name == "use_reference":
            out += [] if value else ["--no-reference"]
        else:
            out += [flag, str(value)]
    return out


def input_flags(example: Example) -> tuple[list[str], dict[str, Image.Image]]:
    """The CLI's input flags (file names in the example folder) and the images to write under those names."""
    src, _ = draw_objects(example.source)
    files: dict[str, Image.Image] = {"source.png": src}
    out = ["--source", "source.png"]
    for i, ref in enumerate(example.refs):
        stem = "reference" if len(example.refs) == 1 else f"reference_{ref.words[0] if ref.words else i + 1}"
        img, mask = ref.image()
        files[f"{stem}.png"] = img
        out += ["--reference", f"{stem}.png", "--reference-mask"]
        if ref.auto:
            out.append("auto")
        else:
            files[f"{stem}_mask.png"] = Image.fromarray(mask.astype(np.uint8) * 255)
            out.append(f"{stem}_mask.png")
        if ref.words:
            out += ["--for", ",".join(ref.words)]
    return out, files


def write(example: Example, folder: Path | None = None) -> Path:
    """Draw the example's inputs with the scene code into its folder and write edit.json."""
    folder = folder or example.folder
    folder.mkdir(parents=True, exist_ok=True)
    inputs, files = input_flags(example)
    for name, im in files.items():
        im.save(folder / name)
    (folder / "edit.json").write_text(json.dumps({
        "what": example.caption, "source": scene_dict(example.source),
        "references": [{"scene": scene_dict(r.scene), "for": list(r.words), "mask": "auto" if r.auto else "drawn",
                        "busy_background_seed": r.busy} for r in example.refs],
        "inputs": inputs, "flags": flags(dict(example.fields))}, indent=1) + "\n")
    return folder


def scene_dict(scene: Scene) -> dict:
    d = dict(scene.__dict__)
    d["other"] = None if scene.other is None else scene_dict(scene.other)
    return d


# ---- the examples -----------------------------------------------------------------------------------------------

STAR = Scene("star", "yellow", "checkered", "black")
ONE = Scene("circle", "red", "plain", "gray")
# Two objects side by side, apart by more than scenes.MARGIN (as in training).
TWO = Scene("circle", "red", "plain", "gray", 0.27, 0.5, 0.17,
            Scene("square", "blue", "plain", "gray", 0.73, 0.5, 0.17))
COMMON = (("mode", "refine"), ("self_replace_steps", 0.4), ("sr_layers", (10, 16)))

CHECKER = Example(
    "toy-checker", ONE, (Ref(STAR),), (0,),
    (("source_prompt", ONE.caption()), ("target_prompt", ONE.caption(colour=False)), ("target_words", ("circle",)),
     ("blend_words", (("red", "circle"), ("circle",))), *COMMON),
    "a red circle becomes a circle with the reference star's colour and pattern (a yellow checker)")
TWO_ONE = Example(
    "toy-two-objects", TWO, (Ref(Scene("star", "green", "striped", "black")),), (0,),
    (("source_prompt", TWO.caption()), ("target_prompt", TWO.caption(colour=(False, True))),
     ("target_words", ("circle",)), ("blend_words", (("red", "circle"), ("circle",))), *COMMON),
    "of a red circle and a blue square, only the circle takes the reference's look (green stripes); the square "
    "and the background stay")
TWO_REFS = Example(
    "toy-two-references", TWO,
    (Ref(Scene("star", "yellow", "checkered", "black"), ("circle",)),
     Ref(Scene("star", "purple", "striped", "black"), ("square",))), (0, 1),
    (("source_prompt", TWO.caption()), ("target_prompt", TWO.caption(colour=False)),
     ("blend_words", (("red", "circle", "blue", "square"), ("circle", "square"))), *COMMON),
    "one reference per word: the circle takes the yellow checkered star, the square the purple striped one")
BUSY_SOURCE = Scene("square", "red", "plain", "white", 0.5, 0.5, 0.22)
BUSY = Example(
    "toy-busy-reference", BUSY_SOURCE, (Ref(STAR, auto=True, busy=0),), (0,),
    (("source_prompt", BUSY_SOURCE.caption()), ("target_prompt", BUSY_SOURCE.caption(colour=False)),
     ("target_words", ("square",)), ("blend_words", (("red", "square"), ("square",))),
     ("reference_prompt", STAR.caption(background=False)), ("auto_mask_words", ("star",)), *COMMON),
    "a reference on a busy background with no mask ('auto': the star's own cross-attention finds it): the square "
    "takes the star's look, not the background's")
EXAMPLES_ALL = (CHECKER, TWO_ONE, TWO_REFS, BUSY)
# The examples the shipped model does (assets/examples/NAME): the others are the targets of the next release, whose
# words must find one of two objects; the shipped model's do not (assets/toy-sd/README.md, measured).
SHIPPED = (CHECKER,)

# Controls: the same edit with other references. Every colour but the source's red, in every texture (24).
CONTROL_OBJECTS = [(c, t) for c in COLOURS if c != "red" for t in TEXTURES]


def controls(example: Example) -> list[tuple[Ref, ...]]:
    """24 reference sets for `example`: each of CONTROL_OBJECTS as a star (the example's kind of reference); with two
    references, the second one's colour and texture both differ from the first's (so the two can be told apart)."""
    out = []
    for k, (c, t) in enumerate(CONTROL_OBJECTS):
        first = example.refs[0]
        refs = [Ref(first.scene.with_(colour=c, texture=t), first.words, first.auto, first.busy)]
        if len(example.refs) > 1:
            second = example.refs[1]
            c2, t2 = next((c2, t2) for j in range(1, len(CONTROL_OBJECTS))
                          for c2, t2 in [CONTROL_OBJECTS[(k + 7 * j) % len(CONTROL_OBJECTS)]] if c2 != c and t2 != t)
            refs.append(Ref(second.scene.with_(colour=c2, texture=t2), second.words, second.auto, second.busy))
        out.append(tuple(refs))
    return out
