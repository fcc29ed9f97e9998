"""Pictures of what an edit computes (`--inspect DIR`): one function per picture, from a specref.trace.Recorder.

- cross_attention_picture: one tile per prompt token, the map blocks' maps summed over the steps (P2P's
  `show_cross_attention` layout: the token under its tile).
- masks_picture: Local Blend's mask and mask_t (its normalised map, then thresholded) over the steps.
- sr_picture: per SR layer size, where SR-attn changed the target and which reference pixels it drew from.
- trajectory_picture: the predicted x0 of the reconstruction and edit paths at a few steps.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

import sampling
from model import CLIPTokenizer, StableDiffusion

from ..images import to_pil
from ..trace import Recorder

TILE = 128      # tile side in pixels
LABEL = 16      # label strip height
# A perceptual dark-blue -> red -> yellow ramp (like matplotlib's "inferno"), for maps in [0, 1].
RAMP = np.array([[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]], np.float64)


def font(size: int = 12) -> ImageFont.ImageFont:
    """Pillow's built-in font (scalable where FreeType is available)."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def heat(values: np.ndarray | Tensor, size: tuple[int, int], normalise: bool = True) -> Image.Image:
    """A map [h, w] -> RGB heat image at `size` (nearest upsampling: one block per map cell); normalise: min-max
    (P2P divides by the max; the min-max shows where a word's attention is above its floor)."""
    v = np.asarray(values.detach().float().cpu() if isinstance(values, Tensor) else values, np.float64)
    v = np.nan_to_num(v)
    if normalise:
        v = (v - v.min()) / (v.max() - v.min()) if v.max() > v.min() else np.zeros_like(v)
    x = np.clip(v, 0, 1) * (len(RAMP) - 1)
    i = np.minimum(x.astype(int), len(RAMP) - 2)
    rgb = RAMP[i] + (x - i)[..., None] * (RAMP[i + 1] - RAMP[i])
    return Image.fromarray(rgb.round().astype(np.uint8)).resize(size, Image.Resampling.NEAREST)


def overlay(image: Image.Image, values: np.ndarray | Tensor, size: tuple[int, int] = (TILE, TILE),
            alpha: float = 0.6, normalise: bool = True) -> Image.Image:
    """The heat map of `values` laid over `image` (in grey, so its colours do not read as heat; resized to `size`)."""
    base = image.convert("L").convert("RGB").resize(size, Image.Resampling.BICUBIC)
    return Image.blend(base, heat(values, size, normalise), alpha)


def labelled_grid(rows: list[list[Image.Image]], labels: list[list[str]], row_titles: list[str] | None = None,
                  title: str = "") -> Image.Image:
    """Tiles in rows, each with its label drawn under it; optional row titles on the left and a title on top."""
    f, tw = font(12), max(t.width for r in rows for t in r)
    th = max(t.height for r in rows for t in r)
    left = 8 + max((int(f.getlength(s)) for s in row_titles or []), default=0)
    top = LABEL + 4 if title else 0
    cols = max(len(r) for r in rows)
    sheet = Image.new("RGB", (left + cols * (tw + 4), top + len(rows) * (th + LABEL + 4)), "white")
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((4, 2), title, fill="black", font=f)
    for r, (tiles, names) in enumerate(zip(rows, labels)):
        y = top + r * (th + LABEL + 4)
        if row_titles:
            draw.text((4, y + th // 2 - 6), row_titles[r], fill="black", font=f)
        for c, (tile, name) in enumerate(zip(tiles, names)):
            x = left + c * (tw + 4)
            sheet.paste(tile, (x, y))
            keep = max(1, int(len(name) * tw / f.getlength(name)) - 1)
            text = name if f.getlength(name) <= tw else name[:keep] + "…"
            draw.text((x + (tw - f.getlength(text)) / 2, y + th + 1), text, fill="black", font=f)
    return sheet


def token_labels(tokenizer: CLIPTokenizer, prompt: str) -> list[str]:
    """The prompt's tokens as text, start and end tokens included, padding left out (index = map column)."""
    enc = tokenizer.encode(prompt)
    return ["<start>"] + [prompt[a:b] for a, b in enc.spans] + ["<end>"]


def cross_attention_picture(maps: Tensor, labels: list[str], image: Image.Image, title: str = "") -> Image.Image:
    """One tile per token (maps [hm, wm, 77] summed over steps, heads averaged), over `image`, token under it."""
    tiles = [overlay(image, maps[..., k]) for k in range(len(labels))]
    per_row = 8
    rows = [tiles[i:i + per_row] for i in range(0, len(tiles), per_row)]
    names = [labels[i:i + per_row] for i in range(0, len(labels), per_row)]
    return labelled_grid(rows, names, title=title)


def every_kth(steps: list[int], most: int = 10) -> list[int]:
    """At most `most` of `steps`, evenly spread, the last one included."""
    if len(steps) <= most:
        return steps
    k = -(-len(steps) // most)
    picked = steps[::-1][::k][::-1]
    return picked[-most:]


def masks_picture(rec: Recorder, source: Image.Image, most: int = 10) -> Image.Image:
    """Filmstrip over the edit steps: Local Blend's mask, mask_t's normalised map, and mask_t (thres applied)."""
    steps = every_kth([i for i in range(len(rec.blend)) if rec.blend[i] is not None or rec.mask_t[i] is not None],
                      most)
    if not steps:
        return labelled_grid([[source.convert("RGB").resize((TILE, TILE))]], [["no Local Blend, no mask_t"]])
    blank = Image.new("RGB", (TILE, TILE), (235, 235, 235))

    def tile(m: Tensor | None, normalise: bool = False) -> Image.Image:
        return blank if m is None else overlay(source, m.float(), normalise=normalise, alpha=0.55)

    rows = [[tile(rec.blend[i]) for i in steps], [tile(rec.mask_t_map[i]) for i in steps],
            [tile(rec.mask_t[i]) for i in steps]]
    labels = [[f"step {i}" for i in steps]] * 3
    return labelled_grid(rows, labels, ["Local Blend", "mask_t map", "mask_t"],
                         title="over the source; grey: not computed at that step")


def sr_picture(rec: Recorder, source: Image.Image, references: list[Image.Image]) -> Image.Image:
    """Per SR layer size: |out - out_self| over the source, and the reference mass over each reference."""
    maps = rec.sr_maps()
    if not maps or not references:
        return labelled_grid([[source.convert("RGB").resize((TILE, TILE))]], [["no SR-attn in this edit"]])
    rows, labels, titles = [], [], []
    many = len(references) > 1
    for hw, (change, mass) in maps.items():
        rows.append([overlay(source, change)] + [overlay(r, m) for r, m in zip(references, mass)])
        labels.append(["changed (target)"] + [f"drawn from (reference{f' {i + 1}' if many else ''})"
                                              for i in range(len(references))])
        titles.append(f"{hw[0]}x{hw[1]} blocks {','.join(map(str, sorted(rec.sr_blocks.get(hw, ()))))}")
    return labelled_grid(rows, labels, titles, title="SR-attn, averaged over heads and SR steps")


def trajectory_picture(sd: StableDiffusion, rec: Recorder) -> Image.Image:
    """The decoded predicted x0 of the reconstruction (top) and edit (bottom) paths at the kept steps."""
    steps = sorted(rec.x0)
    images = [[to_pil(img) for img in sampling.decode(sd, rec.x0[i])] for i in steps]  # [step][path]
    tiles = [[im[p].resize((TILE, TILE), Image.Resampling.BICUBIC) for im in images] for p in (0, 1)]
    labels = [[f"step {i}" for i in steps]] * 2
    return labelled_grid(tiles, labels, ["reconstruction", "edit"], title="predicted x0 at step i")


def write_inspection(folder: str | Path, sd: StableDiffusion, rec: Recorder, source_prompt: str, target_prompt: str,
                     source: Image.Image, references: Image.Image | list[Image.Image] | None) -> list[Path]:
    """Write the four pictures of an inspected edit into `folder` (references: the edit's reference images, in
    order; none for the P2P baseline); returns their paths."""
    references = [references] if isinstance(references, Image.Image) else list(references or [])
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    if rec.maps is not None:
        for k, (name, prompt) in enumerate((("source", source_prompt), ("target", target_prompt))):
            pic = cross_attention_picture(rec.maps[k], token_labels(sd.tokenizer, prompt), source,
                                          f"{name} prompt: map blocks' cross-attention per token, summed over the "
                                          "steps, heads averaged; each tile min-max normalised")
            out.append(folder / f"cross_attention_{name}.png")
            pic.save(out[-1])
    pictures = {"masks_over_steps.png": masks_picture(rec, source),
                "sr_attention.png": sr_picture(rec, source, references),
                "trajectory.png": trajectory_picture(sd, rec)}
    for name, pic in pictures.items():
        out.append(folder / name)
        pic.save(out[-1])
    return out


def mass_inside(values: Tensor, region: np.ndarray) -> float:
    """Fraction of a non-negative map's mass that falls inside `region` (bool, any size; the map is resized)."""
    v = np.asarray(values.detach().float().cpu(), np.float64)
    r = np.asarray(Image.fromarray(region.astype(np.uint8) * 255).resize(v.shape[::-1], Image.Resampling.BOX)) / 255
    return float((v * r).sum() / v.sum())
