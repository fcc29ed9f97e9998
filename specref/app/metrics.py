"""Background-preservation metrics of an edit: PSNR and SSIM outside the edit region, its area, peak memory.

SSIM is Wang et al. 2004 as commonly used: 11x11 Gaussian window (sigma 1.5, truncated at 3.5 sigma), K1 = 0.01,
K2 = 0.03, data range 255, population (not sample) covariances, computed per RGB channel as a map and averaged
over the channels; borders are reflected (scipy's 'reflect', as scikit-image does). The map is averaged over the
pixels outside the region, so windows next to the region's border still see a few region pixels (the margin
keeps that small).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..images import load_image
from ..masks import read_mask

MARGIN = 8  # default dilation of the Local Blend region, in working-size pixels (one latent cell)


def gaussian_window(sigma: float = 1.5, truncate: float = 3.5) -> torch.Tensor:
    """The normalised 1-D Gaussian of SSIM (11 taps for sigma 1.5), float64."""
    r = int(truncate * sigma + 0.5)
    x = torch.arange(-r, r + 1, dtype=torch.float64)
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def _reflect(x: torch.Tensor, r: int) -> torch.Tensor:
    """Pad the last two dims by r with edge-repeating reflection (d c b a | a b c d), scipy's 'reflect'."""
    for dim in (-1, -2):
        n = x.shape[dim]
        idx = torch.cat([torch.arange(r - 1, -1, -1), torch.arange(n), torch.arange(n - 1, n - 1 - r, -1)])
        x = x.index_select(dim, idx.clamp(0, n - 1))
    return x


def _blur(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian filter of [C, H, W] with reflected borders."""
    r, c = len(g) // 2, x.shape[0]
    y = _reflect(x, r)[None]
    y = F.conv2d(y, g.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(y, g.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)[0]


def ssim_map(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor, data_range: float = 255.0) -> torch.Tensor:
    """SSIM map [H, W] of two [H, W, C] (or [H, W]) images, averaged over channels (float64)."""
    x, y = (torch.as_tensor(np.array(v), dtype=torch.float64) for v in (a, b))  # a copy: PIL arrays are read-only
    if x.shape != y.shape:
        raise ValueError(f"SSIM needs images of one shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    x, y = (v[..., None] if v.dim() == 2 else v for v in (x, y))
    x, y = x.permute(2, 0, 1), y.permute(2, 0, 1)
    g = gaussian_window()
    mx, my = _blur(x, g), _blur(y, g)
    vx, vy, cxy = _blur(x * x, g) - mx**2, _blur(y * y, g) - my**2, _blur(x * y, g) - mx * my
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return s.mean(0)


def psnr_where(a: np.ndarray, b: np.ndarray, where: np.ndarray | None = None) -> float | None:
    """PSNR in dB of two 8-bit [H, W, C] images over the pixels where `where` is True (inf if equal; None if none)."""
    d = (a.astype(np.float64) - b.astype(np.float64)) ** 2
    if where is not None:
        if not where.any():
            return None  # nothing outside the region
        d = d[where]
    mse = float(d.mean())
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def dilate(mask: np.ndarray, margin: int) -> np.ndarray:
    """Grow a bool mask [H, W] by `margin` pixels (square neighbourhood)."""
    if margin <= 0:
        return mask.astype(bool)
    t = torch.from_numpy(mask.astype(np.float32))[None, None]
    return (F.max_pool2d(t, 2 * margin + 1, stride=1, padding=margin)[0, 0] > 0).numpy()


def edit_region(size: tuple[int, int], working_size: tuple[int, int], blend_mask: torch.Tensor | None,
                source_mask: str | Path | Image.Image | None, margin: int = MARGIN) -> tuple[np.ndarray | None, str]:
    """The region [H, W] bool at the output `size` (W, H) that the metrics leave out, and where it came from.

    A user's source mask (white = edit region, e.g. PIE-Bench's) is used as given; otherwise the final Local Blend
    region, upsampled to the working size and dilated by `margin` working pixels; without either, None.
    """
    if source_mask is not None:
        image = source_mask if isinstance(source_mask, Image.Image) else load_image(source_mask, "source mask")
        m = read_mask(image)
        return np.asarray(Image.fromarray(m).resize(size, Image.Resampling.NEAREST)) > 0, "source-mask"
    if blend_mask is None:
        return None, "none"
    m = np.asarray(blend_mask.detach().float().cpu() > 0.5)
    m = np.asarray(Image.fromarray(m).resize(working_size, Image.Resampling.NEAREST))
    m = dilate(m, margin)
    return np.asarray(Image.fromarray(m).resize(size, Image.Resampling.NEAREST)) > 0, f"blend+{margin}px"


def background_metrics(source: Image.Image, edited: Image.Image, region: np.ndarray | None) -> dict:
    """PSNR and SSIM between source and edit outside `region` (whole image without one; None when the region is
    everything), and the region's area (fraction of the image)."""
    a, b = (np.asarray(i.convert("RGB")) for i in (source, edited))
    outside = None if region is None else ~region
    ssim = ssim_map(a, b)
    if outside is not None and not outside.any():  # the region is the whole image: nothing to measure
        return {"psnr_outside": None, "ssim_outside": None, "region_area": 1.0}
    return {"psnr_outside": psnr_where(a, b, outside),
            "ssim_outside": float(ssim.mean() if outside is None else ssim[torch.from_numpy(outside)].mean()),
            "region_area": 0.0 if region is None else float(region.mean())}


class PeakMemory:
    """Peak memory of the work inside the block: CUDA's allocator peak, or on CPU the process's peak RSS (VmHWM,
    reset on entry through /proc/self/clear_refs where Linux allows it; otherwise the peak since start)."""

    def __init__(self, device: str | torch.device = "cpu"):
        self.cuda = str(device).startswith("cuda") and torch.cuda.is_available()
        self.device, self.peak = device, 0

    def __enter__(self) -> "PeakMemory":
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            try:
                Path("/proc/self/clear_refs").write_text("5")
            except OSError:
                pass
        return self

    def __exit__(self, *exc) -> None:
        if self.cuda:
            self.peak = torch.cuda.max_memory_allocated(self.device)
            return
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    self.peak = int(line.split()[1]) * 1024
        except OSError:
            import resource

            self.peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
