"""Synthetic scenes for the embedded demo model: a textured shape (or two) on a plain background, with a caption.

Used by scripts/train_toy.py (training data), scripts/demo.py (the shipped example) and the tests of the
trained model. Deterministic: a scene is a small dataclass, drawn the same way every time.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "star")
COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (235, 205, 40),
           "purple": (140, 60, 190), "orange": (240, 130, 30), "white": (240, 240, 240)}
TEXTURES = ("plain", "striped", "dotted", "checkered")
BACKGROUNDS = {"black": (25, 25, 25), "gray": (128, 128, 128), "white": (235, 235, 235), "blue": (50, 70, 150),
               "green": (50, 120, 60), "brown": (120, 80, 45)}
SIZE = 128
PERIOD = 32  # texture period in pixels at 128²: 4 latent pixels (a checker square is 2), on the image's fixed grid


@dataclass(frozen=True)
class Scene:
    """One object (shape, colour, texture) at (cx, cy) with radius r, on a plain background; units of SIZE.
    `other`: an optional second object, drawn after the first (its own background field is not used)."""

    shape: str
    colour: str
    texture: str
    background: str
    cx: float = 0.5
    cy: float = 0.5
    r: float = 0.25
    other: "Scene | None" = None

    def phrase(self, colour: bool = True, texture: bool = True) -> str:
        """'a red striped circle', leaving out the parts switched off (and 'plain')."""
        words = ([self.colour] if colour else []) + ([self.texture] if texture and self.texture != "plain" else [])
        words = ["an" if (words + [self.shape])[0][0] in "aeiou" else "a"] + words + [self.shape]
        return " ".join(words)

    def caption(self, colour: bool = True, texture: bool = True, background: bool = True) -> str:
        """'a red striped circle [and a blue square] on a gray background', leaving out the parts switched off."""
        text = self.phrase(colour, texture)
        if self.other is not None:
            text += " and " + self.other.phrase(colour, texture)
        return text + (f" on a {self.background} background" if background else "")

    def with_(self, **changes: object) -> "Scene":
        """A copy with some fields changed."""
        return replace(self, **changes)


def random_scene(rng: np.random.Generator) -> Scene:
    """A random scene: any shape, colour, texture; a background whose name differs from the object colour."""
    colour = str(rng.choice(list(COLOURS)))
    background = str(rng.choice([b for b in BACKGROUNDS if b != colour]))
    return Scene(str(rng.choice(SHAPES)), colour, str(rng.choice(TEXTURES)), background,
                 cx=float(rng.uniform(0.38, 0.62)), cy=float(rng.uniform(0.38, 0.62)), r=float(rng.uniform(0.2, 0.3)))


def random_caption(scene: Scene, rng: np.random.Generator) -> str:
    """A training caption: each attribute is sometimes left out so shorter prompts are in distribution."""
    if rng.random() < 0.1:
        return ""  # unconditional, for classifier-free guidance
    return scene.caption(colour=rng.random() > 0.15, texture=rng.random() > 0.3, background=rng.random() > 0.25)


def _outline(scene: Scene, scale: float) -> tuple[str, list[float]]:
    cx, cy, r = scene.cx * scale, scene.cy * scale, scene.r * scale
    if scene.shape == "circle":
        return "ellipse", [cx - r, cy - r, cx + r, cy + r]
    if scene.shape == "square":
        s = r * 0.9
        return "polygon", [cx - s, cy - s, cx + s, cy - s, cx + s, cy + s, cx - s, cy + s]
    if scene.shape == "triangle":
        pts = [(cx + r * math.sin(a), cy - r * math.cos(a) + 0.15 * r) for a in (0, 2 * math.pi / 3, 4 * math.pi / 3)]
        return "polygon", [c for p in pts for c in p]
    if scene.shape == "star":
        pts = [(cx + rr * math.sin(a), cy - rr * math.cos(a) + 0.1 * r)
               for i in range(10) for a, rr in [(i * math.pi / 5, 1.2 * r if i % 2 == 0 else 0.55 * r)]]
        return "polygon", [c for p in pts for c in p]
    raise ValueError(f"unknown shape {scene.shape!r}; choose from {SHAPES}")


def texture_pattern(scene: Scene, n: int) -> np.ndarray:
    """Where the texture's second colour goes, [n, n] bool (n = drawing size). On the image's fixed grid (edges on
    the 8 px latent grid, the same phase in every image), so a kind looks the same wherever its object is."""
    yy, xx = np.mgrid[:n, :n] / n * SIZE  # in 128² pixel units
    half, texture = PERIOD // 2, scene.texture
    if texture == "plain":
        return np.zeros((n, n), bool)
    if texture == "striped":
        return (yy // half) % 2 == 1
    if texture == "checkered":
        return ((yy // half) + (xx // half)) % 2 == 1
    if texture == "dotted":  # dots centred on multiples of PERIOD
        dy, dx = (yy + half) % PERIOD - half, (xx + half) % PERIOD - half
        return dy * dy + dx * dx < (PERIOD * 0.27) ** 2
    raise ValueError(f"unknown texture {texture!r}; choose from {TEXTURES}")


def _paint(arr: np.ndarray, scene: Scene) -> Image.Image:
    """Paint one object onto arr [n, n, 3] float in place; returns its L mask at n²."""
    n = arr.shape[0]
    kind, coords = _outline(scene, n)
    mask = Image.new("L", (n, n), 0)
    getattr(ImageDraw.Draw(mask), kind)(coords, fill=255)
    colour = np.array(COLOURS[scene.colour], np.float32)
    second = colour * 0.3  # the darker pattern colour
    obj = np.where(texture_pattern(scene, n)[..., None], second, colour)
    m = np.asarray(mask, np.float32)[..., None] / 255
    arr *= 1 - m
    arr += m * obj
    return mask


def draw(scene: Scene, size: int = SIZE) -> tuple[Image.Image, Image.Image]:
    """(RGB image, L mask with 255 = the first object), drawn at 2x and reduced, so edges are antialiased."""
    n = size * 2
    arr = np.empty((n, n, 3), np.float32)
    arr[:] = BACKGROUNDS[scene.background]
    mask = _paint(arr, scene)
    if scene.other is not None:
        _paint(arr, scene.other)
    img = Image.fromarray(arr.round().astype(np.uint8)).resize((size, size), Image.Resampling.BOX)
    return img, mask.resize((size, size), Image.Resampling.BOX).point(lambda v: 255 if v >= 128 else 0)
