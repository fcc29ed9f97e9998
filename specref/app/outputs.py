"""An edit's output folder: the images, the masks, the summary picture, the metrics and run.json — the one writer
that `edit`, every sweep run and every batch job use (the folder rule is folders.py's)."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import platform
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from model import StableDiffusion

from ..images import load_image, mask_to_pil
from ..pipeline import EditResult
from ..settings import ALIASES
from .folders import RECORD, record_mark, staged_folder
from .jobs import EditJob, Runtime
from .metrics import background_metrics, edit_region

COLOURS = [(255, 0, 0), (0, 96, 255), (0, 200, 0), (255, 160, 0), (200, 0, 255), (0, 200, 200)]


def sha256(item: Any) -> str | None:
    """A file's SHA-256 (None for an in-memory image or "auto")."""
    ok = isinstance(item, (str, Path)) and str(item) and Path(item).is_file()
    return hashlib.sha256(Path(item).read_bytes()).hexdigest() if ok else None


def _one(values: list) -> Any:
    """A list of one as its element (run.json of one reference keeps its earlier form), else the list (or None)."""
    return values[0] if len(values) == 1 else (values or None)


def _name(item: Any) -> str | None:
    if item is None:
        return None
    return str(item) if isinstance(item, (str, Path)) else f"<{type(item).__name__}>"


def summary_image(source: Image.Image, references: list[Image.Image], result: EditResult,
                  words: list[tuple[str, ...]] | None = None) -> Image.Image:
    """source | each reference with its mask_s | mask_t over the source (each word group's region in its own colour)
    | edit; `words`: each reference's --for words."""
    h = 256

    def tile(im: Image.Image) -> Image.Image:
        return im.convert("RGB").resize((max(1, round(im.width * h / im.height)), h))

    tiles, labels = [tile(source)], ["source"]
    for i, r in enumerate(references):
        ref = tile(r)
        if i < len(result.masks_s):
            dark = Image.composite(ref, Image.new("RGB", ref.size, (0, 0, 0)), mask_to_pil(result.masks_s[i], ref.size))
            ref = Image.blend(ref, dark, 0.6)
        tiles.append(ref)
        bound = words[i] if words else ()
        labels.append(("reference + mask_s" if len(references) == 1 else f"reference {i + 1}")
                      + (f" for {','.join(bound)}" if bound else ""))
    regions = result.masks_t if len(result.masks_t) > 1 else ({"": result.mask_t} if result.mask_t is not None else {})
    if regions:
        src = out = tile(source)
        for (_, m), colour in zip(regions.items(), COLOURS * 4):
            tinted = Image.blend(src, Image.new("RGB", src.size, colour), 0.5)
            out = Image.composite(tinted, out, mask_to_pil(m, src.size))
        tiles.append(out)
        labels.append("mask_t" if len(regions) == 1 else "mask_t: " + " / ".join(regions))
    tiles.append(tile(result.edit))
    labels.append("edit")
    sheet = Image.new("RGB", (sum(t.width for t in tiles) + 4 * (len(tiles) - 1), h + 18), "white")
    x, draw = 0, ImageDraw.Draw(sheet)
    for t, label in zip(tiles, labels):
        sheet.paste(t, (x, 18))
        draw.text((x + 4, 3), label, fill="black")
        x += t.width + 4
    return sheet


def model_record(sd: StableDiffusion, source: str | None = None, dtype_reason: str | None = None) -> dict:
    """run.json's entries about the model: where it came from, its family and prediction type (with what its
    loader had to assume, §9.5), its dtype (and why) and device."""
    return {"model": source or sd.source or None, "family": sd.family, "prediction_type": sd.prediction_type,
            "assumptions": sd.extra.get("assumptions", []), "dtype": str(sd.dtype).removeprefix("torch."),
            "dtype_reason": dtype_reason, "device": str(sd.device)}


def run_record(job: EditJob, result: EditResult, runtime: Runtime, model: dict, metrics: dict) -> dict:
    """run.json: every setting as resolved and where it came from, the inputs and their hashes, the model, the
    metrics and timings, the versions."""
    refs = list(job.references) if result.config.use_reference else []
    settings = dataclasses.asdict(result.config)
    settings |= {old: settings[new] for old, new in ALIASES.items()}  # earlier names, same values
    sources = {k: job.sources.get(k) or result.sources.get(k) or "default" for k in dataclasses.asdict(result.config)}
    sources |= {k: v for k, v in result.sources.items() if v == "model"}
    return {
        "settings": settings, "setting_sources": sources, "preset": job.preset, **model,
        "inputs": {"source": _name(job.source), "reference": _one([_name(r.image) for r in refs]),
                   "reference_mask": _one([_name(r.mask) for r in refs]) if any(r.mask is not None for r in refs)
                   else None,
                   "for": [list(r.target_words) for r in refs] if any(r.target_words for r in refs) else None,
                   "source_mask": _name(job.source_mask)},
        "sha256": {"source": sha256(job.source), "reference": _one([sha256(r.image) for r in refs]),
                   "reference_mask": _one([sha256(r.mask) for r in refs if r.mask is not None]),
                   "model": sha256(runtime.model) if runtime.model else None},
        "working_size": list(result.working_size), "timings_s": result.timings,
        "reference_feature_bytes": result.feature_bytes, "metrics": metrics,
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__},
    }


def write_edit(out: str | Path, job: EditJob, result: EditResult, runtime: Runtime, model: dict, peak_bytes: int,
               extra: dict | None = None) -> tuple[Path, dict]:
    """Write an edit's output folder through a temporary folder renamed into place (folders.py); returns the folder
    and its run.json record."""
    out = Path(out)
    source = load_image(job.source, "source")
    refs = list(job.references) if result.config.use_reference else []
    region, kind = edit_region(source.size, result.working_size, result.blend_mask, job.source_mask,
                               job.metrics_margin)
    metrics = {**background_metrics(source, result.edit, region), "region": kind,
               "seconds": result.timings.get("total"), "peak_memory_bytes": peak_bytes}
    with staged_folder(out, runtime.overwrite) as tmp:
        result.edit.save(tmp / "edit.png")
        result.reconstruction.save(tmp / "reconstruction.png")
        for i, m in enumerate(result.masks_s):  # mask_s.png; mask_s_1.png ... with several references
            mask_to_pil(m).save(tmp / ("mask_s.png" if len(result.masks_s) == 1 else f"mask_s_{i + 1}.png"))
        if result.mask_t is not None:
            mask_to_pil(result.mask_t, result.working_size).save(tmp / "mask_t.png")
        if len(result.masks_t) > 1:  # one reference per target word: each word group's region
            for words, m in result.masks_t.items():
                mask_to_pil(m, result.working_size).save(tmp / f"mask_t_{words.replace(',', '_')}.png")
        images = [load_image(r.image, "reference") for r in refs]
        summary_image(source, images, result, [r.target_words for r in refs]).save(tmp / "summary.png")
        if region is not None:
            mask_to_pil(region).save(tmp / "region.png")  # what the metrics leave out
        if runtime.save_tensors:
            save_tensors(tmp / "tensors.safetensors", result)
        record = run_record(job, result, runtime, model, metrics) | (extra or {})
        record["specref"] = record_mark("edit", [p.name for p in tmp.iterdir() if not p.name.startswith(".")])
        (tmp / RECORD).write_text(json.dumps(record, indent=2, default=str))
    return out, record


def save_tensors(path: Path, result: EditResult) -> None:
    """tensors.safetensors: the latents and mask_t, in the edit's own precision (float64 in the float64 mode)."""
    from safetensors.torch import save_file

    dt = torch.float64 if result.latents["edit_latent"].dtype == torch.float64 else torch.float32
    t = {k: v.to("cpu", dt).contiguous() for k, v in result.latents.items()}
    if result.mask_t is not None:
        t["mask_t"] = result.mask_t.to("cpu", dt).contiguous()
    save_file(t, path)

