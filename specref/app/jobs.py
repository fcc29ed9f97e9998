"""An edit as a user gives it (flags, a job line, a sweep combination) and how to run the model: dataclasses that
the command line, sweeps and batches build and the library takes. Settings are parsed by the one table
(specref/settings.py); the inputs are the few keys below."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from ..references import AUTO, Reference, check_references
from ..presets import resolve
from ..settings import EditConfig, canonical, parse_value, validate
from .metrics import MARGIN

# The keys of an edit besides its settings: (key, help). Batch job lines use them; the CLI has them as flags.
INPUT_KEYS = {
    "source": "source image to edit",
    "reference": "reference image(s): the object the edit region becomes (a list for several)",
    "reference_mask": "mask of the object on each reference: a file (white = object) or 'auto'",
    "for": "target words whose own region takes each reference (a list: one entry per reference)",
    "source_mask": "edit region on the source (white = region) that the metrics leave out",
    "preset": "settings of a §6 row",
    "no_reference": "true: the Prompt-to-Prompt baseline (no SR-attn)",
    "metrics_margin": "dilation of the Local Blend region before the metrics, in working-size pixels",
    "name": "the job's folder name (batch)",
}


@dataclass(frozen=True)
class Runtime:
    """How to load and run the model, and how outputs are written."""

    model: str | None = None          # a diffusers folder, an LDM single file, a Hub id; None: the demo model
    dtype: str | None = None          # a dtype name or "auto"; None: float32 on CPU, float16 on CUDA
    device: str = "cpu"
    progress: bool = True
    save_tensors: bool = False
    overwrite: bool = False
    prediction_type: str | None = None  # override for a single file that cannot tell (§9.5)


@dataclass(frozen=True)
class EditJob:
    """One edit: its inputs, its settings and where each setting came from (flag / preset / default)."""

    source: str | Path | Image.Image
    references: tuple[Reference, ...]  # () for the Prompt-to-Prompt baseline
    config: EditConfig
    sources: dict[str, str] = field(default_factory=dict)
    preset: str | None = None
    source_mask: str | Path | Image.Image | None = None
    metrics_margin: int = MARGIN
    name: str = ""
    labels: dict[str, str] = field(default_factory=dict)  # a sweep's varied values, a batch job's line

    def input_paths(self) -> list[str | Path]:
        """Every input file the edit reads (outputs must not be or hold one of them)."""
        files = [self.source, self.source_mask]
        for r in self.references:
            files += [r.image, None if r.auto else r.mask]
        return [f for f in files if isinstance(f, (str, Path))]


def make_references(paths: list, masks: list, bound: dict[int, tuple[str, ...]]) -> tuple[Reference, ...]:
    """--reference / --reference-mask / --for as References (counts checked)."""
    if masks and len(masks) != len(paths):
        raise ValueError(f"{len(masks)} --reference-mask for {len(paths)} --reference: give one per reference, in "
                         "the same order (a file or 'auto'), or none")
    extra = sorted(set(bound) - set(range(len(paths))))
    if extra:
        raise ValueError(f"--for given for reference {extra[0] + 1} of {len(paths)}")
    return tuple(Reference(p, mask=masks[i] if masks else None, target_words=bound.get(i, ()))
                 for i, p in enumerate(paths))


def _as_list(value: Any) -> list:
    return [] if value is None else list(value) if isinstance(value, (list, tuple)) else [value]


def make_job(given: dict[str, Any], inputs: dict[str, Any], base: Path | None = None) -> EditJob:
    """An EditJob from parsed settings `given` (name -> value) and the input keys (INPUT_KEYS); paths relative to
    `base`. Every setting is checked here, with no model (§7)."""
    unknown = sorted(set(inputs) - set(INPUT_KEYS))
    if unknown:
        raise ValueError(f"unknown key {unknown[0]!r} (settings and {', '.join(INPUT_KEYS)})")
    where = (lambda p: p if base is None or not isinstance(p, str) or p == AUTO else str(base / p))  # noqa: E731
    if inputs.get("source") is None:
        raise ValueError("no source image (--source, or \"source\" in a job)")
    no_reference = bool(inputs.get("no_reference"))
    given = dict(given)
    if no_reference:
        given["use_reference"] = False
    cfg, sources = resolve(given, inputs.get("preset"))
    validate(cfg)
    refs: tuple[Reference, ...] = ()
    if not no_reference:
        paths = [where(p) for p in _as_list(inputs.get("reference"))]
        if not paths:
            raise ValueError("give a reference (--reference), or --no-reference for the P2P baseline")
        bound = inputs.get("for") or {}
        if isinstance(bound, list):  # a job line: one word list (or comma text) per reference
            bound = {i: tuple(parse_value("target_words", w)) for i, w in enumerate(bound) if w}
        refs = make_references(paths, [where(m) for m in _as_list(inputs.get("reference_mask"))], bound)
        check_references(cfg, list(refs))
    margin = inputs.get("metrics_margin", MARGIN)
    if not isinstance(margin, int) or isinstance(margin, bool) or not 0 <= margin <= 256:
        raise ValueError(f"--metrics-margin must be a whole number of pixels from 0 to 256, got {margin!r}")
    return EditJob(where(inputs["source"]), refs, cfg, sources, inputs.get("preset"),
                   where(inputs.get("source_mask")), margin, str(inputs.get("name") or ""))


def split_job(job: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A JSON job line (or sweep values) -> (parsed settings, input keys); names with '-' or '_' both work."""
    given, inputs = {}, {}
    for key, value in job.items():
        name = key.strip().lstrip("-").replace("-", "_")
        if name in INPUT_KEYS:
            inputs[name] = value
        else:
            given[canonical(name)] = parse_value(name, value)
    return given, inputs


def content_hash(item: Any) -> str:
    """A short hash of what decides an edit's result: files by their bytes, images by their pixels, settings by
    their values (a job's identity for resume and for its default folder name)."""
    return hashlib.sha256(json.dumps(_content(item), sort_keys=True, default=str).encode()).hexdigest()[:12]


def _content(item: Any) -> Any:
    if isinstance(item, EditJob):
        return {"source": _picture(item.source), "references": [_content(r) for r in item.references],
                "settings": vars(item.config), "source_mask": _picture(item.source_mask),
                "metrics_margin": item.metrics_margin}
    if isinstance(item, Reference):
        return [_picture(item.image), _picture(item.mask), item.target_words, item.prompt, item.auto_mask_words]
    if isinstance(item, (list, tuple)):
        return [_content(v) for v in item]
    return item


def _picture(item: Any) -> Any:
    """A picture input by its content: a file's bytes, an image's pixels, an array's values ("auto" and None as
    they are)."""
    if item is None or item == AUTO:
        return item
    if isinstance(item, Image.Image):
        return ["image", item.mode, item.size, hashlib.sha256(item.tobytes()).hexdigest()]
    if hasattr(item, "__array__"):
        return _picture(Image.fromarray(item))
    path = Path(item)
    return ["file", hashlib.sha256(path.read_bytes()).hexdigest()] if path.is_file() else ["missing", str(item)]
