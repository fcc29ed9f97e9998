"""Synthetic scenes for the embedded demo model: one or two textured shapes on a plain background, with a caption.

Used by scripts/toy/train.py (training data: the images, their captions and where each captioned word's object
is), scripts/demo.py (the shipped examples) and the model's measurements (scripts/toy/evaluate.py,
tests/test_toy.py). Deterministic: a scene is a small dataclass, drawn the same way every time.
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
TWO_OBJECTS = 0.5  # the fraction of random scenes with two objects
MARGIN = 0.06      # the least gap between two objects' outlines (8 px at 128²), in units of SIZE
BACKGROUND = -1    # the role of the background words in a caption (objects: 0, 1; other words: None)


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

    def objects(self) -> list["Scene"]:
        """The scene's objects, first then other, each alone on the scene's background."""
        return [self.with_(other=None)] + ([self.other.with_(background=self.background, other=None)]
                                           if self.other is not None else [])

    def phrase(self, colour: bool = True, texture: bool = True) -> str:
        """'a red striped circle', leaving out the parts switched off (and 'plain')."""
        return " ".join(w for w, _ in self.phrase_words(colour, texture))

    def phrase_words(self, colour: bool = True, texture: bool = True,
                     role: int | None = 0) -> list[tuple[str, int | None]]:
        """The phrase's words with their roles: colour, texture and shape words have `role`, the article None."""
        words = ([self.colour] if colour else []) + ([self.texture] if texture and self.texture != "plain" else [])
        words.append(self.shape)
        return [("an" if words[0][0] in "aeiou" else "a", None)] + [(w, role) for w in words]

    def caption_words(self, colour: bool | tuple[bool, ...] = True, texture: bool | tuple[bool, ...] = True,
                      background: bool = True) -> list[tuple[str, int | None]]:
        """The caption's words and their roles: object index (0, 1) for an object's colour, texture and shape
        words, BACKGROUND for the background's colour and 'background', None for the rest. colour, texture: one
        flag for every object or one per object."""
        n = len(self.objects())
        colours = (colour,) * n if isinstance(colour, bool) else tuple(colour)
        textures = (texture,) * n if isinstance(texture, bool) else tuple(texture)
        words: list[tuple[str, int | None]] = []
        for i, obj in enumerate(self.objects()):
            words += ([("and", None)] if i else []) + obj.phrase_words(colours[i], textures[i], i)
        if background:
            words += [("on", None), ("a", None), (self.background, BACKGROUND), ("background", BACKGROUND)]
        return words

    def caption(self, colour: bool | tuple[bool, ...] = True, texture: bool | tuple[bool, ...] = True,
                background: bool = True) -> str:
        """'a red striped circle [and a blue square] on a gray background', leaving out the parts switched off."""
        return " ".join(w for w, _ in self.caption_words(colour, texture, background))

    def with_(self, **changes: object) -> "Scene":
        """A copy with some fields changed."""
        return replace(self, **changes)


def extent(shape: str) -> float:
    """The largest distance of a shape's outline from its (cx, cy), in units of its r."""
    kind, coords = _outline(Scene(shape, "white", "plain", "black", 0.0, 0.0, 1.0), 1.0)
    return 1.0 if kind == "ellipse" else max(math.hypot(x, y) for x, y in zip(coords[::2], coords[1::2]))


def _place(rng: np.random.Generator, shapes: list[str], radii: list[float]) -> list[tuple[float, float]]:
    """Centres for objects of these shapes and radii: inside the image with a margin, outlines MARGIN apart."""
    ext = [extent(s) * r for s, r in zip(shapes, radii)]
    while True:
        centres = [(float(rng.uniform(e + MARGIN / 2, 1 - e - MARGIN / 2)),
                    float(rng.uniform(e + MARGIN / 2, 1 - e - MARGIN / 2))) for e in ext]
        if len(centres) < 2 or math.dist(*centres) >= ext[0] + ext[1] + MARGIN:
            return centres


def random_object(rng: np.random.Generator, shapes=SHAPES, colours=tuple(COLOURS)) -> tuple[str, str, str]:
    """(shape, colour, texture) drawn from the given shapes and colours and every texture."""
    return str(rng.choice(list(shapes))), str(rng.choice(list(colours))), str(rng.choice(TEXTURES))


def random_scene(rng: np.random.Generator, two: float = TWO_OBJECTS) -> Scene:
    """A random scene: with probability `two` two objects (different shapes and colours, radius 0.14-0.2, apart by
    MARGIN), else one (radius 0.2-0.3, near the centre); any textures; a background named unlike the objects."""
    if rng.random() >= two:
        shape, colour, texture = random_object(rng)
        background = str(rng.choice([b for b in BACKGROUNDS if b != colour]))
        return Scene(shape, colour, texture, background, cx=float(rng.uniform(0.38, 0.62)),
                     cy=float(rng.uniform(0.38, 0.62)), r=float(rng.uniform(0.2, 0.3)))
    first = random_object(rng)
    second = random_object(rng, [s for s in SHAPES if s != first[0]], [c for c in COLOURS if c != first[1]])
    background = str(rng.choice([b for b in BACKGROUNDS if b not in (first[1], second[1])]))
    radii = [float(rng.uniform(0.14, 0.2)) for _ in range(2)]
    (x0, y0), (x1, y1) = _place(rng, [first[0], second[0]], radii)
    return Scene(*first, background, x0, y0, radii[0], Scene(*second, background, x1, y1, radii[1]))


def random_words(scene: Scene, rng: np.random.Generator) -> list[tuple[str, int | None]]:
    """A training caption's words and roles (Scene.caption_words): each object's colour (15 %) and texture (30 %)
    and the background (25 %) are left out at random, so shorter prompts are in distribution; 10 % are empty."""
    if rng.random() < 0.1:
        return []  # unconditional, for classifier-free guidance
    n = len(scene.objects())
    colours = tuple(bool(rng.random() > 0.15) for _ in range(n))
    textures = tuple(bool(rng.random() > 0.3) for _ in range(n))
    return scene.caption_words(colours, textures, background=bool(rng.random() > 0.25))


def random_caption(scene: Scene, rng: np.random.Generator) -> str:
    """A training caption (random_words, joined)."""
    return " ".join(w for w, _ in random_words(scene, rng))


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


def draw_objects(scene: Scene, size: int = SIZE) -> tuple[Image.Image, list[Image.Image]]:
    """(RGB image, an L mask per object with 255 = that object), drawn at 2x and reduced, so edges are antialiased."""
    n = size * 2
    arr = np.empty((n, n, 3), np.float32)
    arr[:] = BACKGROUNDS[scene.background]
    masks = [_paint(arr, obj) for obj in scene.objects()]
    img = Image.fromarray(arr.round().astype(np.uint8)).resize((size, size), Image.Resampling.BOX)
    return img, [m.resize((size, size), Image.Resampling.BOX).point(lambda v: 255 if v >= 128 else 0) for m in masks]


def draw(scene: Scene, size: int = SIZE) -> tuple[Image.Image, Image.Image]:
    """(RGB image, L mask with 255 = the first object), drawn at 2x and reduced, so edges are antialiased."""
    img, masks = draw_objects(scene, size)
    return img, masks[0]
