"""Command line: `python -m specref edit|sweep|batch|sample|reconstruct ...` and `--preset-list`."""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import platform
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, PngImagePlugin

from .config import PRESETS, EditConfig
from .images import load_image, mask_to_pil, psnr, to_pil, to_tensor, working_size
from .inspect import write_inspection
from .metrics import MARGIN, PeakMemory, background_metrics, edit_region
from .outputs import OutputError, check_file, check_folder, record_mark, staged_folder, write_file
from .pipeline import DTYPES, EditResult, edit, x0_steps
from .references import AUTO, Reference
from .trace import Recorder, save_trace
from weights import precision


def _words(text: str | None) -> tuple[str, ...]:
    return tuple(w.strip() for w in text.split(",") if w.strip()) if text else ()


def _pair(text: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """'cat;tiger' or 'board,lake;mattress,bedroom' -> (source words, target words)."""
    if ";" not in text:
        raise argparse.ArgumentTypeError(f"expected 'source words;target words', got {text!r}")
    a, b = text.split(";", 1)
    return _words(a), _words(b)


def _range(text: str) -> tuple[int, int]:
    a, b = text.replace("-", ",").split(",")
    return int(a), int(b)


def _ints(text: str) -> tuple[int, ...]:
    """'4,5,7,8,9' or a range '10-13' (end excluded)."""
    if "-" in text:
        a, b = _range(text)
        return tuple(range(a, b))
    return tuple(int(v) for v in text.split(","))


def _floats(text: str) -> tuple[float, float]:
    a, b = text.split(",")
    return float(a), float(b)


def _reweight(text: str) -> tuple[tuple[str, float], ...]:
    """'vase=2,flowers=0.5'."""
    out = []
    for item in _words(text):
        word, _, factor = item.partition("=")
        out.append((word.strip(), float(factor)))
    return tuple(out)


# The edit's settings as flags: flag -> (EditConfig field, parser, group, help). Every preset setting has a flag;
# an explicit flag overrides the preset. `--help` shows each default (EditConfig's) and its SPEC section.
P2P, BLEND, SR, SAMPLING, PROMPTS = ("Prompt-to-Prompt (SPEC §4.1)", "Local Blend (SPEC §4.3)",
                                     "SR-attn: the reference (SPEC §4.4)", "sampling (SPEC §2-§3)", "inputs and prompts")
EDIT_FLAGS: dict[str, tuple[str, object, str, str]] = {
    "--source-prompt": ("source_prompt", str, PROMPTS, "prompt that describes the source image (SPEC §1)"),
    "--target-prompt": ("target_prompt", str, PROMPTS, "the source prompt with the edit's words changed (SPEC §1)"),
    "--reference-prompt": ("reference_prompt", str, PROMPTS,
                           "prompt the reference is inverted with (SPEC §3; the presets use the empty prompt)"),
    "--reference-words": ("reference_words", _words, PROMPTS,
                          "words of --reference-prompt whose cross-attention during the inversion is an 'auto' "
                          "mask_s (issue 19; needs a non-empty --reference-prompt, which changes the reference's "
                          "inverted K/V)"),
    "--target-words": ("target_words", _words, SR,
                       "comma-separated target-prompt words whose cross-attention is the edit region mask_t (§4.4)"),
    "--mode": ("mode", str, P2P, "replace: same word count, words swapped; refine: any prompts, tokens aligned "
               "(SPEC §4.1)"),
    "--cross-replace-steps": ("cross_replace_steps", float, P2P,
                              "fraction of the steps (from the start) in which the target's cross-attention "
                              "maps are the source's, edited (SPEC §4.1)"),
    "--self-replace-steps": ("self_replace_steps", float, P2P,
                             "fraction of the steps in which the target takes the source's self-attention (layers "
                             "<= latent/2 side): higher keeps more of the source's layout (SPEC §4.1)"),
    "--reweight": ("reweight", _reweight, P2P, "target words and factors that scale their attention, e.g. "
                   "'vase=2' (SPEC §4.1)"),
    "--blend-words": ("blend_words", _pair, BLEND, "'source words;target words' whose attention is the region "
                      "Local Blend lets change, e.g. 'cat;tiger'; outside it the source is kept (SPEC §4.3)"),
    "--substruct-words": ("substruct_words", _pair, BLEND, "'source words;target words' taken out of the blend "
                          "region (SPEC §4.3)"),
    "--blend-th": ("blend_th", _floats, BLEND, "thresholds 'th0,th1' of the blend and substruct maps (SPEC §4.3)"),
    "--start-blend": ("start_blend", float, BLEND, "fraction of the steps before Local Blend starts (SPEC §4.3)"),
    "--map-blocks": ("map_blocks", _ints, BLEND, "cross-attention blocks (one map size) whose maps Local Blend and "
                     "mask_t read, e.g. '4,5,7,8,9' (SPEC §4.3) or '13-16'"),
    "--thres": ("thres", float, SR, "threshold of the resized mask_s and of the min-max normalised mask_t: "
                "lower grows the edit region (SPEC §4.4)"),
    "--reference-thres": ("reference_thres", float, SR, "threshold of the min-max normalised map of an 'auto' "
                          "mask_s, resized like mask_t (SPEC §4.4): lower grows it"),
    "--sr-steps": ("sr_steps", _range, SR, "editing steps 'start-end' (end excluded) with SR-attn (SPEC §4.4)"),
    "--sr-layers": ("sr_layers", _range, SR, "self-attention block indices 'start-end' (0-16, end excluded) "
                    "with SR-attn (SPEC §2, §4.4)"),
    "--masks": ("masks", str, SR, "both | s | t | none: which of mask_s, mask_t SR-attn uses (ablations, §4.4)"),
    "--interp": ("interp", str, SR, "nearest | bilinear: how masks and maps are resized to a layer (SPEC §4.4)"),
    "--feature-dtype": ("feature_dtype", str, SR, "dtype of the kept reference K/V (default: the model's; SPEC §3)"),
    "--steps": ("steps", int, SAMPLING, "DDIM steps N of inversion and edit (SPEC §2)"),
    "--guidance": ("guidance", float, SAMPLING, "classifier-free guidance scale of the edit (SPEC §2)"),
    "--inversion-guidance": ("inversion_guidance", float, SAMPLING, "guidance of the inversion; 1 = conditional "
                             "only (SPEC §3)"),
    "--size": ("size", int, SAMPLING, "working long side in pixels, a multiple of 64 (default: the model's native "
               "size; SPEC §3)"),
}


CHOICES = {"mode": ("replace", "refine"), "masks": ("both", "s", "t", "none"), "interp": ("nearest", "bilinear"),
           "feature_dtype": tuple(DTYPES)}
METAVARS = {str: "TEXT", _words: "WORDS", float: "F", int: "N", _range: "A-B", _pair: "SRC;TGT", _ints: "BLOCKS",
            _floats: "T0,T1", _reweight: "WORD=F"}


class _BindFor(argparse.Action):
    """`--for WORDS` binds the --reference before it to target words: {reference index: words}."""

    def __call__(self, parser, namespace, values, option_string=None):
        refs = getattr(namespace, "reference", None) or []
        if not refs:
            parser.error("--for WORDS binds the --reference before it: give --reference first")
        binds = dict(getattr(namespace, self.dest, None) or {})
        if len(refs) - 1 in binds:
            parser.error(f"--for given twice after --reference {refs[-1]}")
        binds[len(refs) - 1] = _words(values)
        setattr(namespace, self.dest, binds)


def _default(field: str) -> str:
    """EditConfig's default of a field, as --help shows it."""
    value = {f.name: f.default for f in dataclasses.fields(EditConfig)}.get(field)
    if value is dataclasses.MISSING:
        return "required without --preset"
    if field == "steps" or value is None or value == () or value == "":
        return {"steps": "50", "size": "model's native", "reference_prompt": "''"}.get(field, "none")
    if isinstance(value, tuple) and all(isinstance(v, int) for v in value):
        return ",".join(map(str, value)) if field == "map_blocks" else f"{value[0]}-{value[1]}"
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


def _add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("runtime")
    g.add_argument("--model", default=None, help="diffusers folder, LDM .safetensors/.ckpt, or Hub repo id "
                   "(default: the embedded demo model)")
    g.add_argument("--dtype", default=None, choices=list(precision.NAMES),
                   help="model weights dtype (default: float16 on CUDA, float32 on CPU for bit-reproducible runs). "
                   "auto: float16 on CUDA, bfloat16 on a CPU with native bf16 (AVX-512 BF16 or AMX), else float32. "
                   "bfloat16 on a CPU without native bf16 runs, with a warning: it is ~140x slower than float32 there "
                   "(a 1024² matmul on an AVX2 AMD EPYC). float64: the verification mode, every part in float64 "
                   "for comparing implementations (scripts/compare_trace.py)")
    g.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    g.add_argument("--quiet", action="store_true", help="no progress bars")


def add_edit_args(e: argparse.ArgumentParser, out: str = "out", out_help: str = "output folder (edit.png, "
                  "reconstruction.png, masks, summary.png, run.json) [out]") -> None:
    """The `edit` flags (inputs, every EDIT_FLAGS setting by group, runtime, outputs); `sweep` takes them too."""
    groups = {name: e.add_argument_group(name) for name in (PROMPTS, P2P, BLEND, SR, SAMPLING)}
    gi = groups[PROMPTS]
    gi.add_argument("--source", required=True, help="source image to edit")
    gi.add_argument("--reference", action="append", help="reference image: the object the edit region becomes "
                    "(or an RGBA / on-black cutout); repeat for several views of the object, all attended together, "
                    "each resized to the source's working size (SPEC §3-§4.4)")
    gi.add_argument("--reference-mask", action="append", help="mask of the object on the reference, white = object, "
                    "or 'auto' (from --reference-words): mask_s (SPEC §4.4); one per --reference, in order "
                    "[the reference's non-black / alpha > 0 pixels]")
    gi.add_argument("--for", action=_BindFor, dest="reference_for", metavar="WORDS", default=None,
                    help="target words whose own region takes the --reference before it (one reference per target "
                    "word; each word gets its own mask_t, SPEC §4.4) [all references on --target-words]")
    gi.add_argument("--preset", choices=sorted(PRESETS), help="settings of a SPEC §6 row (python -m specref "
                    "--preset-list)")
    gi.add_argument("--source-mask", help="edit region on the source, white = region (e.g. a benchmark's): the "
                    "metrics measure outside it [the final Local Blend region]")
    gi.add_argument("--metrics-margin", type=int, default=MARGIN, metavar="PX", help="dilation of the Local "
                    f"Blend region before the metrics, in working-size pixels [{MARGIN}]")
    gi.add_argument("--no-reference", action="store_true", help="the P2P baseline of the paper's comparison: "
                    "no SR-attn (SPEC §4.4)")
    for flag, (field, kind, group, text) in EDIT_FLAGS.items():
        choices = CHOICES.get(field)
        groups[group].add_argument(flag, type=kind, default=None, choices=choices, metavar=None if choices else METAVARS.get(kind),
                                   help=f"{text} [{_default(field)}]")
    _add_model_args(e)
    o = e.add_argument_group("outputs")
    o.add_argument("--out", default=out, help=out_help)
    add_overwrite(o)
    o.add_argument("--save-tensors", action="store_true", help="also write tensors.safetensors (latents, mask_t)")


def add_overwrite(group) -> None:
    """--overwrite: the one way to replace a previous output (specref/outputs.py has the rule)."""
    group.add_argument("--overwrite", action="store_true", help="replace a previous output of specref at the "
                       "output path (a folder holding only what that run wrote, or a file specref wrote); a folder "
                       "or file of anything else is never touched")


def build_parser() -> argparse.ArgumentParser:
    """The `python -m specref` argument parser."""
    parser = argparse.ArgumentParser(prog="python -m specref", description=__doc__)
    parser.add_argument("--preset-list", action="store_true", help="print the presets and exit")
    sub = parser.add_subparsers(dest="command")
    e = sub.add_parser("edit", help="edit a source image with a reference object (SPEC §3-§4)",
                       description="Edit SOURCE so that the target words' region becomes the reference object. "
                       "Give --preset or the prompts; every flag overrides the preset. Defaults in brackets.")
    add_edit_args(e)
    o = e.add_argument_group("seeing inside the edit (docs/method.md)")
    o.add_argument("--inspect", metavar="DIR", help="also draw what the edit computed into DIR: per-token "
                   "cross-attention, Local Blend and mask_t over the steps, SR-attn's change and reference mass, "
                   "the predicted x0")
    o.add_argument("--trace", metavar="FILE", help="also write the per-step numbers (latents, noise predictions, "
                   "masks, word maps) as safetensors, for scripts/compare_trace.py (README: Seeing inside an edit)")
    w = sub.add_parser("sweep", help="one edit per combination of --vary values: one model load, one inversion "
                       "per stage-1 setting", description="Every edit flag, plus --vary NAME=V1,V2 (any edit flag's "
                       "name; '|' between values when a value has commas, e.g. --vary 'map-blocks=4,5,7|13,14,15').")
    add_edit_args(w, out_help="sweep folder: a folder per run, sheet.png, results.csv [out/sweep]", out="out/sweep")
    g = w.add_argument_group("sweep")
    g.add_argument("--vary", action="append", default=[], metavar="NAME=V1,V2",
                   help="an edit flag's name and its values; several --vary: every combination")
    g.add_argument("--zip", action="store_true", help="pair the --vary lists (same length) instead of their product")
    b = sub.add_parser("batch", help="the edits of a JSON-lines job file; resumable; runs under torchrun",
                       description="One edit per line of JOBS: a JSON object with source, reference, "
                       "reference_mask, source_mask, preset, name and any edit flag without its dashes "
                       "(e.g. \"self_replace_steps\": 0.6); paths relative to JOBS. Finished jobs are skipped; "
                       "the exit code is the number of failed jobs.")
    b.add_argument("jobs", help="JSON-lines job file")
    _add_model_args(b)
    o = b.add_argument_group("outputs")
    o.add_argument("--out", default="out/batch", help="batch folder: a folder per job and results.csv; a previous "
                   "batch folder resumes [out/batch]")
    o.add_argument("--save-tensors", action="store_true", help="also write tensors.safetensors for every job")
    s = sub.add_parser("sample", help="text-to-image (checks a model)")
    _add_model_args(s)
    s.add_argument("--prompt", required=True)
    s.add_argument("--negative-prompt", default="")
    s.add_argument("--steps", type=int, default=50)
    s.add_argument("--guidance", type=float, default=7.5)
    s.add_argument("--height", type=int, default=None)
    s.add_argument("--width", type=int, default=None)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", default="sample.png")
    add_overwrite(s)
    r = sub.add_parser("reconstruct", help="invert an image and regenerate it; prints the PSNR")
    _add_model_args(r)
    r.add_argument("--image", required=True)
    r.add_argument("--prompt", default="")
    r.add_argument("--steps", type=int, default=50)
    r.add_argument("--guidance", type=float, default=1.0)
    r.add_argument("--size", type=int, default=None, help="working long side (default: the model's native size)")
    r.add_argument("--out", default="reconstruction")
    add_overwrite(r)
    return parser


def edit_config(args: argparse.Namespace) -> EditConfig:
    """Preset (if any) plus every explicit flag."""
    given = {field: getattr(args, flag[2:].replace("-", "_")) for flag, (field, *_) in EDIT_FLAGS.items()}
    given = {k: v for k, v in given.items() if v is not None}
    if args.no_reference:
        given["use_reference"] = False
    if args.preset:
        return PRESETS[args.preset].config(steps=given.pop("steps", 50), **given)
    missing = [f for f in ("--source-prompt", "--target-prompt") if EDIT_FLAGS[f][0] not in given]
    if missing:
        raise SystemExit(f"error: give --preset or {' and '.join(missing)}")
    return EditConfig(**given)


def _list(value: object) -> list:
    """A repeatable flag's value as a list (None: [], one path: [path])."""
    return [] if value is None else list(value) if isinstance(value, (list, tuple)) else [value]


def _one(values: list | None):
    """A list of one as its element (run.json of one reference is as before), else the list (or None)."""
    return values[0] if values and len(values) == 1 else (values or None)


def _sha256(path: str | Path | None) -> str | None:
    ok = isinstance(path, (str, Path)) and path and Path(path).is_file()  # not for in-memory images
    return hashlib.sha256(Path(path).read_bytes()).hexdigest() if ok else None


COLOURS = [(255, 0, 0), (0, 96, 255), (0, 200, 0), (255, 160, 0), (200, 0, 255), (0, 200, 200)]


def summary_image(source: Image.Image, reference, mask_s, mask_t, result: EditResult,
                  reference_words: list[tuple[str, ...]] | None = None) -> Image.Image:
    """source | each reference with its mask | mask_t over the source (each word's region in its own colour) | edit.

    `reference` / `mask_s`: one image / mask, or lists of them (several references); `reference_words`: --for."""
    h = 256
    tile = lambda im: im.convert("RGB").resize((max(1, round(im.width * h / im.height)), h))  # noqa: E731
    refs = reference if isinstance(reference, list) else ([] if reference is None else [reference])
    masks = mask_s if isinstance(mask_s, list) else [mask_s] * len(refs)
    tiles, labels = [tile(source)], ["source"]
    for i, (r, m) in enumerate(zip(refs, masks)):
        ref = tile(r)
        if m is not None:
            ref = Image.blend(ref, Image.composite(ref, Image.new("RGB", ref.size, (0, 0, 0)),
                                                   mask_to_pil(m, ref.size)), 0.6)
        tiles.append(ref)
        words = reference_words[i] if reference_words else ()
        labels.append(("reference + mask_s" if len(refs) == 1 else f"reference {i + 1}") +
                      (f" for {','.join(words)}" if words else ""))
    regions = result.masks_t if len(result.masks_t) > 1 else ({"": mask_t} if mask_t is not None else {})
    if regions:
        src = tile(source)
        out = src
        for (words, m), colour in zip(regions.items(), COLOURS * 4):
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


def references_from_args(args: argparse.Namespace) -> list[Reference]:
    """--reference / --reference-mask / --for as References; count errors before any work."""
    paths, masks = _list(args.reference), _list(args.reference_mask)  # a batch job may give one as a string
    binds = getattr(args, "reference_for", None) or {}
    if masks and len(masks) != len(paths):
        raise ValueError(f"{len(masks)} --reference-mask for {len(paths)} --reference: give one per reference, in "
                         f"the same order (a file or 'auto'), or none")
    refs = []
    for i, path in enumerate(paths):
        name = "reference" if len(paths) == 1 else f"reference {i + 1}"
        mask = masks[i] if masks else None
        refs.append(Reference(load_image(path, name), mask=AUTO if mask == AUTO else mask, words=binds.get(i, ())))
    return refs


def load(args: argparse.Namespace):
    """The model named by --model/--dtype/--device."""
    import weights

    dtype, args.dtype_reason = precision.resolve_dtype(args.dtype, args.device)
    args.dtype = precision.dtype_name(dtype)
    print(f"dtype {args.dtype} on {args.device} ({args.dtype_reason})")
    return weights.load_model(args.model, dtype=dtype, device=args.device)


def edit_inputs(args: argparse.Namespace) -> tuple[EditConfig, list[Reference] | None]:
    """The settings and the references (None for --no-reference) of edit flags; edit, sweep and batch share it."""
    cfg = edit_config(args)
    if not args.reference and not args.no_reference:
        raise SystemExit("error: give --reference (or --no-reference for the P2P baseline)")
    return cfg, None if args.no_reference else references_from_args(args)


def run_edit(args: argparse.Namespace) -> Path:
    """`edit`: everything is computed first, then written, so a failure leaves no partial output folder."""
    import sampling
    import weights

    cfg, refs = edit_inputs(args)
    check_edit_outputs(args)
    src_img = load_image(args.source, "source")
    sd = load(args)
    rec = None
    if args.inspect or args.trace:  # the Recorder only reads: the edit is the same without it
        n = cfg.steps
        rec = Recorder(sampling.DDIM(n, config=sd.scheduler_config), cfg.guidance, sr=bool(args.inspect),
                       x0_steps=x0_steps(n) if args.inspect else ())
    with PeakMemory(args.device) as peak:
        result = edit(sd, src_img, refs or None, cfg, progress=not args.quiet, observer=rec)
    out = write_run(Path(args.out), args, result, src_img, refs or [], peak.peak)
    if args.trace:
        meta = {"settings": vars(result.config), "timesteps": rec.ddim.timesteps.tolist(), "dtype": args.dtype,
                "model": args.model or str(weights.DEFAULT_MODEL)}
        tensors = rec.trace(result.latents["source_inverted"])
        write_file(args.trace, lambda p: save_trace(p, tensors, meta), args.overwrite, ours=is_trace)
        print(f"wrote {args.trace}")
    if args.inspect:
        images = [load_image(r.image, "reference") for r in refs or []] if result.config.use_reference else []
        with staged_folder(args.inspect, args.overwrite) as tmp:
            paths = write_inspection(tmp, sd, rec, cfg.source_prompt, cfg.target_prompt, src_img, images)
            (tmp / "run.json").write_text(json.dumps({"specref": record_mark("inspect", [p.name for p in paths])}))
        print(f"wrote {len(paths)} pictures to {args.inspect}")
    return out


def input_paths(args: argparse.Namespace) -> list:
    """Every input file or folder an edit reads (outputs must not be or hold one of them)."""
    masks = [m for m in _list(getattr(args, "reference_mask", None)) if m != AUTO]
    return [args.source, *_list(getattr(args, "reference", None)), *masks, getattr(args, "source_mask", None),
            getattr(args, "model", None)]


def is_trace(path: Path) -> bool:
    """True if `path` is a trace file specref wrote (a safetensors file with its metadata)."""
    from .trace import load_trace

    try:
        return bool(load_trace(path)[1])
    except Exception:  # noqa: BLE001 - anything unreadable is not ours
        return False


def check_edit_outputs(args: argparse.Namespace) -> None:
    """The output paths of `edit` (--out, --trace, --inspect), before the model loads (specref/outputs.py)."""
    inputs = input_paths(args)
    check_folder(args.out, inputs, args.overwrite)
    out = Path(args.out).resolve()
    for flag, path in (("--trace", getattr(args, "trace", None)), ("--inspect", getattr(args, "inspect", None))):
        if path and (Path(path).resolve() == out or out in Path(path).resolve().parents):
            raise OutputError(f"{flag} {path} is inside --out {args.out}: put it beside the output folder")
    if getattr(args, "trace", None):
        check_file(args.trace, inputs, args.overwrite, "--trace", ours=is_trace)
    if getattr(args, "inspect", None):
        check_folder(args.inspect, inputs, args.overwrite, "--inspect")


def write_run(out: Path, args: argparse.Namespace, result: EditResult, src_img: Image.Image,
              references: list[Reference], peak_bytes: int, extra: dict | None = None) -> Path:
    """An edit's output folder (images, masks, metrics, run.json), written to a temporary folder and renamed into
    place; `edit`, each sweep run and each batch job write exactly this."""
    import weights

    refs = references if result.config.use_reference else []
    reference = [str(p) for p in _list(getattr(args, "reference", None))] if refs else None
    region, region_kind = edit_region(src_img.size, result.working_size, result.blend_mask,
                                      getattr(args, "source_mask", None), getattr(args, "metrics_margin", MARGIN))
    metrics = {**background_metrics(src_img, result.edit, region), "region": region_kind,
               "seconds": result.timings.get("total"), "peak_memory_bytes": peak_bytes}
    with staged_folder(out, getattr(args, "overwrite", False)) as tmp:
        result.edit.save(tmp / "edit.png")
        result.reconstruction.save(tmp / "reconstruction.png")
        for i, m in enumerate(result.masks_s):  # mask_s.png; mask_s_1.png ... with several references
            mask_to_pil(m).save(tmp / ("mask_s.png" if len(result.masks_s) == 1 else f"mask_s_{i + 1}.png"))
        if result.mask_t is not None:
            mask_to_pil(result.mask_t, result.working_size).save(tmp / "mask_t.png")
        if len(result.masks_t) > 1:  # one reference per target word: each word's region
            for words, m in result.masks_t.items():
                mask_to_pil(m, result.working_size).save(tmp / f"mask_t_{words.replace(',', '_')}.png")
        summary_image(src_img, [load_image(r.image, "reference") for r in refs] or None, result.masks_s or None,
                      result.mask_t, result, [r.words for r in refs]).save(tmp / "summary.png")
        if region is not None:
            mask_to_pil(region).save(tmp / "region.png")  # what the metrics leave out
        if args.save_tensors:
            from safetensors.torch import save_file

            t = {k: v.float().contiguous().cpu() for k, v in result.latents.items()}
            if result.mask_t is not None:
                t["mask_t"] = result.mask_t.float().contiguous().cpu()
            save_file(t, tmp / "tensors.safetensors")
        run = {
            "settings": vars(result.config), "preset": args.preset, "model": args.model or str(weights.DEFAULT_MODEL),
            "dtype": args.dtype, "dtype_reason": getattr(args, "dtype_reason", None), "device": str(args.device),
            "inputs": {"source": str(args.source), "reference": _one(reference),
                       "reference_mask": _one(_list(getattr(args, "reference_mask", None))),
                       "for": [list(r.words) for r in refs] if getattr(args, "reference_for", None) else None,
                       "source_mask": getattr(args, "source_mask", None)},
            "sha256": {"source": _sha256(args.source), "reference": _one([_sha256(p) for p in reference or []]),
                       "reference_mask": _one([_sha256(m) for m in _list(getattr(args, "reference_mask", None))]),
                       "model": _sha256(args.model) if args.model and Path(args.model).is_file() else None},
            "working_size": list(result.working_size), "timings_s": result.timings,
            "reference_feature_bytes": result.feature_bytes, "metrics": metrics, **(extra or {}),
            "versions": {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__},
        }
        run["specref"] = record_mark("edit", [p.name for p in tmp.iterdir() if not p.name.startswith(".")])
        (tmp / "run.json").write_text(json.dumps(run, indent=2, default=str))
    return out


PNG_MARK = "specref"  # the PNG text entry that marks an image written by `sample`


def is_sample(path: Path) -> bool:
    """True if `path` is a PNG that `sample` wrote."""
    try:
        with Image.open(path) as im:
            return PNG_MARK in getattr(im, "text", {})
    except Exception:  # noqa: BLE001 - anything unreadable is not ours
        return False


def run_sample(args: argparse.Namespace) -> None:
    import sampling

    check_file(args.out, [args.model], args.overwrite, ours=is_sample)
    sd = load(args)
    lat = sampling.sample(sd, args.prompt, negative_prompt=args.negative_prompt, guidance=args.guidance,
                          steps=args.steps, height=args.height, width=args.width, seed=args.seed,
                          progress=not args.quiet)
    info = PngImagePlugin.PngInfo()
    info.add_text(PNG_MARK, json.dumps({"prompt": args.prompt, "seed": args.seed, "steps": args.steps}))
    image = to_pil(sampling.decode(sd, lat)[0])
    write_file(args.out, lambda p: image.save(p, format="PNG", pnginfo=info), args.overwrite, ours=is_sample)
    print(f"wrote {args.out}")


def run_reconstruct(args: argparse.Namespace) -> None:
    import sampling

    check_folder(args.out, [args.image, args.model], args.overwrite)
    img = load_image(args.image, "image")
    sd = load(args)
    size = working_size(img.width, img.height, args.size or sd.native_size)
    x = to_tensor(img, size)
    z0 = sampling.encode(sd, x)
    lat = sampling.reconstruct(sd, z0, args.prompt, guidance=args.guidance, steps=args.steps, progress=not args.quiet)
    source, recon = to_pil(x[0]), to_pil(sampling.decode(sd, lat)[0])
    vae_only = to_pil(sampling.decode(sd, z0)[0])
    db = {"reconstruction": psnr(recon, source), "vae_only": psnr(vae_only, source)}
    with staged_folder(args.out, args.overwrite) as tmp:
        source.save(tmp / "source.png")
        recon.save(tmp / "reconstruction.png")
        record = {"specref": record_mark("reconstruct", ["source.png", "reconstruction.png"]), "psnr_db": db,
                  "image": str(args.image), "prompt": args.prompt, "steps": args.steps, "guidance": args.guidance}
        (tmp / "run.json").write_text(json.dumps(record, indent=2))
    print(f"PSNR reconstruction vs source: {db['reconstruction']:.2f} dB (VAE alone: {db['vae_only']:.2f} dB)")


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m specref`."""
    args = build_parser().parse_args(argv)
    if args.preset_list:
        for name, p in PRESETS.items():
            s = p.settings
            print(f"{name:16} {s['source_prompt']!r} -> {s['target_prompt']!r}  mode={s['mode']} "
                  f"target={','.join(s['target_words'])} thres={s['thres']} sr_steps={s['sr_steps']} "
                  f"sr_layers={s['sr_layers']} masks={s['masks']} interp={s['interp']}")
        return 0
    if args.command is None:
        build_parser().print_help()
        return 2
    try:
        if args.command == "edit":
            print(f"wrote {run_edit(args)}")
        elif args.command in ("sweep", "batch"):
            from . import study

            return study.run_sweep_command(args) if args.command == "sweep" else study.run_batch_command(args)
        elif args.command == "sample":
            run_sample(args)
        else:
            run_reconstruct(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0
