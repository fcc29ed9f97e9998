"""Image I/O: reading, the working size, conversions to and from [-1, 1] tensors."""
from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError


def load_image(source: str | Path | Image.Image, what: str = "image") -> Image.Image:
    """An image file (or PIL image) -> PIL image as a viewer shows it (as_viewed); unreadable or non-image files
    get a clear error."""
    if isinstance(source, Image.Image):
        return as_viewed(source, what)
    if Path(source).is_dir():
        raise ValueError(f"{what} {source} is a folder, not an image file")
    try:
        img = Image.open(source)
        img.load()
    except FileNotFoundError:
        raise ValueError(f"{what} file {source} does not exist") from None
    except (OSError, UnidentifiedImageError) as e:
        raise ValueError(f"{what} file {source} is not a readable image ({e})") from None
    return as_viewed(img, f"{what} file {source}")


# Modes Pillow converts to RGB as they look; 16-bit, 32-bit and float greyscale are rescaled below.
_AS_IS = ("1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX")
_CONVERT = ("CMYK", "YCbCr", "LAB", "HSV")
_WIDE = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def as_viewed(img: Image.Image, what: str = "image") -> Image.Image:
    """The picture as a viewer shows it: EXIF orientation applied; 16-bit and 32-bit greyscale scaled to 8 bits
    (v / 257, so a 16-bit picture equals its 8-bit version to rounding); float greyscale from [0, 1] (or 0-255 if
    above 1); CMYK and other colour spaces converted to RGB; any other mode refused, naming it."""
    name = getattr(img, "filename", "")
    if img.getexif().get(0x0112, 1) != 1:  # the orientation tag: rotate / flip as viewers do
        img = ImageOps.exif_transpose(img)
    if img.mode in _AS_IS:
        out = img
    elif img.mode in _CONVERT:
        out = img.convert("RGB")
    elif img.mode in _WIDE or img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        if not np.isfinite(arr).all():
            raise ValueError(f"{what} has non-finite pixel values (mode {img.mode})")
        scale = 1 / 257 if img.mode in _WIDE else (255.0 if arr.max(initial=0) <= 1 else 1.0)
        out = Image.fromarray(np.clip(np.round(arr * scale), 0, 255).astype(np.uint8), "L")
    else:
        raise ValueError(f"{what} is a {img.mode} image, which cannot be read as an RGB picture")
    if name and not getattr(out, "filename", ""):
        out.filename = name  # messages name the file
    return out


# Below this side an image carries too little to edit: it is upscaled to the working size (e.g. 1x1 px -> 512²).
MIN_SIDE = 64


def warn_if_small(img: Image.Image, what: str = "image") -> None:
    """Warn when an input image's short side is below MIN_SIDE pixels: it would be silently upscaled and edited."""
    if min(img.size) < MIN_SIDE:
        name = getattr(img, "filename", "")
        warnings.warn(f"{what + ' ' + name if name else what} is only {img.width}x{img.height} px (below the "
                      f"{MIN_SIDE} px minimum side): it is "
                      "upscaled to the working size, and the edit has little to work from", stacklevel=3)


def working_size(width: int, height: int, long_side: int = 512, multiple: int = 64) -> tuple[int, int]:
    """(W, H): the long side scaled to `long_side`, both rounded to multiples of `multiple`, aspect kept."""
    if long_side % multiple or long_side <= 0:
        raise ValueError(f"working size {long_side} must be a positive multiple of {multiple}")
    scale = long_side / max(width, height)
    return (max(multiple, round(width * scale / multiple) * multiple),
            max(multiple, round(height * scale / multiple) * multiple))


def to_tensor(img: Image.Image, size: tuple[int, int], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """PIL -> [1, 3, H, W] in [-1, 1] (float32, or float64 for the float64 mode), resized with an antialiased
    filter (bicubic, §3)."""
    img = img.convert("RGB")
    if img.size != tuple(size):
        img = img.resize(size, Image.Resampling.BICUBIC)
    arr = np.asarray(img, dtype=np.float64 if dtype == torch.float64 else np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(2, 0, 1)[None]


def to_pil(x: torch.Tensor, size: tuple[int, int] | None = None) -> Image.Image:
    """[3, H, W] (or [1,3,H,W]) in [-1, 1] -> PIL, rounded (not truncated, §3), optionally resized."""
    x = x.detach().cpu().reshape(-1, *x.shape[-2:])
    x = x if x.dtype == torch.float64 else x.float()  # the float64 mode rounds from float64
    arr = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
    img = Image.fromarray(arr)
    return img if size is None or img.size == tuple(size) else img.resize(size, Image.Resampling.BICUBIC)


def psnr(a: Image.Image, b: Image.Image, where: np.ndarray | None = None) -> float:
    """PSNR in dB between two same-size 8-bit images (inf if equal), optionally only where `where` is True."""
    x, y = (np.asarray(i.convert("RGB"), dtype=np.float64) for i in (a, b))
    d = (x - y) ** 2
    mse = float((d[where] if where is not None else d).mean())
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def mask_to_pil(mask: np.ndarray | torch.Tensor, size: tuple[int, int] | None = None) -> Image.Image:
    """Bool/0-1 mask -> white-on-black L image (nearest-resized to size)."""
    arr = np.asarray(mask.cpu() if isinstance(mask, torch.Tensor) else mask, dtype=np.float32)
    img = Image.fromarray((arr > 0.5).astype(np.uint8) * 255, mode="L")
    return img if size is None else img.resize(size, Image.Resampling.NEAREST)
