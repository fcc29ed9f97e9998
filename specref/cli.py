"""Command line: `python -m specref edit|sample|reconstruct ...` and `--preset-list`."""
from __future__ import annotations

import argparse
import hashlib
import json
import platform
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from .config import PRESETS, EditConfig
from .images import load_image, mask_to_pil, psnr, to_pil, to_tensor, working_size
from .pipeline import EditResult, edit
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


# flag -> (EditConfig field, parser): every preset setting has a flag; an explicit flag overrides the preset.
EDIT_FLAGS = {
    "--source-prompt": ("source_prompt", str), "--target-prompt": ("target_prompt", str),
    "--reference-prompt": ("reference_prompt", str), "--target-words": ("target_words", _words),
    "--mode": ("mode", str), "--cross-replace-steps": ("cross_replace_steps", float),
    "--self-replace-steps": ("self_replace_steps", float), "--reweight": ("reweight", _reweight),
    "--blend-words": ("blend_words", _pair), "--substruct-words": ("substruct_words", _pair),
    "--blend-th": ("blend_th", _floats), "--start-blend": ("start_blend", float), "--thres": ("thres", float),
    "--map-blocks": ("map_blocks", _ints),
    "--sr-steps": ("sr_steps", _range), "--sr-layers": ("sr_layers", _range), "--masks": ("masks", str),
    "--interp": ("interp", str), "--steps": ("steps", int), "--guidance": ("guidance", float),
    "--inversion-guidance": ("inversion_guidance", float), "--size": ("size", int),
    "--feature-dtype": ("feature_dtype", str),
}
HELP = {
    "--blend-words": "Local Blend words 'src words;tgt words', e.g. 'cat;tiger'", "--sr-steps": "SR-attn steps start-end",
    "--sr-layers": "SR-attn block indices start-end (0-16)", "--masks": "both | s | t | none",
    "--reweight": "target words and factors, e.g. 'vase=2'", "--target-words": "comma-separated words defining mask_t",
    "--substruct-words": "'src words;tgt words' removed from the blend region", "--blend-th": "th0,th1",
    "--map-blocks": "cross-attention blocks whose maps Local Blend and mask_t read, e.g. '4,5,7,8,9' (SPEC) or '10-13'",
}


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="diffusers folder, LDM .safetensors/.ckpt, or Hub repo id "
                   "(default: the embedded demo model)")
    p.add_argument("--dtype", default=None, choices=list(precision.NAMES),
                   help="model weights dtype (default: float16 on CUDA, float32 on CPU for bit-reproducible runs). "
                   "auto: float16 on CUDA, bfloat16 on a CPU with native bf16 (AVX-512 BF16 or AMX), else float32. "
                   "bfloat16 on a CPU without native bf16 runs, with a warning: it is ~140x slower than float32 there "
                   "(a 1024² matmul on an AVX2 AMD EPYC)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    """The `python -m specref` argument parser."""
    parser = argparse.ArgumentParser(prog="python -m specref", description=__doc__)
    parser.add_argument("--preset-list", action="store_true", help="print the presets and exit")
    sub = parser.add_subparsers(dest="command")
    e = sub.add_parser("edit", help="edit a source image with a reference object (SPEC §3-§4)")
    _add_model_args(e)
    e.add_argument("--source", required=True)
    e.add_argument("--reference", help="reference image (or an RGBA / on-black cutout)")
    e.add_argument("--reference-mask", help="mask of the object on the reference (white = object)")
    e.add_argument("--preset", choices=sorted(PRESETS))
    e.add_argument("--no-reference", action="store_true", help="the P2P baseline: no SR-attn")
    e.add_argument("--out", default="out")
    e.add_argument("--save-tensors", action="store_true", help="also write tensors.safetensors")
    for flag, (_, kind) in EDIT_FLAGS.items():
        e.add_argument(flag, type=kind, default=None, help=HELP.get(flag))
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
    r = sub.add_parser("reconstruct", help="invert an image and regenerate it; prints the PSNR")
    _add_model_args(r)
    r.add_argument("--image", required=True)
    r.add_argument("--prompt", default="")
    r.add_argument("--steps", type=int, default=50)
    r.add_argument("--guidance", type=float, default=1.0)
    r.add_argument("--size", type=int, default=None, help="working long side (default: the model's native size)")
    r.add_argument("--out", default="reconstruction")
    return parser


def edit_config(args: argparse.Namespace) -> EditConfig:
    """Preset (if any) plus every explicit flag."""
    given = {field: getattr(args, flag[2:].replace("-", "_")) for flag, (field, _) in EDIT_FLAGS.items()}
    given = {k: v for k, v in given.items() if v is not None}
    if args.no_reference:
        given["use_reference"] = False
    if args.preset:
        return PRESETS[args.preset].config(steps=given.pop("steps", 50), **given)
    missing = [f for f in ("--source-prompt", "--target-prompt") if EDIT_FLAGS[f][0] not in given]
    if missing:
        raise SystemExit(f"error: give --preset or {' and '.join(missing)}")
    return EditConfig(**given)


def _sha256(path: str | Path | None) -> str | None:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest() if path and Path(path).is_file() else None


def summary_image(source: Image.Image, reference: Image.Image | None, mask_s, mask_t, result: EditResult) -> Image.Image:
    """source | reference with its mask | mask_t over the source | edit, side by side."""
    h = 256
    tile = lambda im: im.convert("RGB").resize((max(1, round(im.width * h / im.height)), h))  # noqa: E731
    tiles = [tile(source)]
    if reference is not None:
        ref = tile(reference)
        if mask_s is not None:
            ref = Image.blend(ref, Image.composite(ref, Image.new("RGB", ref.size, (0, 0, 0)),
                                                   mask_to_pil(mask_s, ref.size)), 0.6)
        tiles.append(ref)
    if mask_t is not None:
        src = tile(source)
        red = Image.new("RGB", src.size, (255, 0, 0))
        tiles.append(Image.composite(Image.blend(src, red, 0.5), src, mask_to_pil(mask_t, src.size)))
    tiles.append(tile(result.edit))
    sheet = Image.new("RGB", (sum(t.width for t in tiles) + 4 * (len(tiles) - 1), h + 18), "white")
    x, draw = 0, ImageDraw.Draw(sheet)
    labels = ["source"] + (["reference + mask_s"] if reference is not None else []) + \
             (["mask_t"] if mask_t is not None else []) + ["edit"]
    for t, label in zip(tiles, labels):
        sheet.paste(t, (x, 18))
        draw.text((x + 4, 3), label, fill="black")
        x += t.width + 4
    return sheet


def load(args: argparse.Namespace):
    """The model named by --model/--dtype/--device."""
    import weights

    dtype, args.dtype_reason = precision.resolve_dtype(args.dtype, args.device)
    args.dtype = precision.dtype_name(dtype)
    print(f"dtype {args.dtype} on {args.device} ({args.dtype_reason})")
    return weights.load_model(args.model, dtype=dtype, device=args.device)


def run_edit(args: argparse.Namespace) -> Path:
    """`edit`: everything is computed first, then written, so a failure leaves no partial output folder."""
    import weights

    cfg = edit_config(args)
    reference = None if args.no_reference else args.reference
    if reference is None and not args.no_reference:
        raise SystemExit("error: give --reference (or --no-reference for the P2P baseline)")
    src_img = load_image(args.source, "source")
    ref_img = load_image(reference, "reference") if reference else None
    sd = load(args)
    result = edit(sd, src_img, ref_img, cfg, reference_mask_file=args.reference_mask, progress=not args.quiet)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))  # renamed to `out` when complete
    try:
        result.edit.save(tmp / "edit.png")
        result.reconstruction.save(tmp / "reconstruction.png")
        if result.mask_s is not None:
            mask_to_pil(result.mask_s).save(tmp / "mask_s.png")
        if result.mask_t is not None:
            mask_to_pil(result.mask_t, result.working_size).save(tmp / "mask_t.png")
        summary_image(src_img, ref_img, result.mask_s, result.mask_t, result).save(tmp / "summary.png")
        if args.save_tensors:
            from safetensors.torch import save_file

            t = {k: v.float().contiguous().cpu() for k, v in result.latents.items()}
            if result.mask_t is not None:
                t["mask_t"] = result.mask_t.float().contiguous().cpu()
            save_file(t, tmp / "tensors.safetensors")
        run = {
            "settings": vars(result.config), "preset": args.preset, "model": args.model or str(weights.DEFAULT_MODEL),
            "dtype": args.dtype, "dtype_reason": args.dtype_reason, "device": str(args.device),
            "inputs": {"source": str(args.source), "reference": reference, "reference_mask": args.reference_mask},
            "sha256": {"source": _sha256(args.source), "reference": _sha256(reference),
                       "reference_mask": _sha256(args.reference_mask),
                       "model": _sha256(args.model) if args.model and Path(args.model).is_file() else None},
            "working_size": list(result.working_size), "timings_s": result.timings,
            "reference_feature_bytes": result.feature_bytes,
            "versions": {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__},
        }
        (tmp / "run.json").write_text(json.dumps(run, indent=2, default=str))
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def run_sample(args: argparse.Namespace) -> None:
    import sampling

    sd = load(args)
    lat = sampling.sample(sd, args.prompt, negative_prompt=args.negative_prompt, guidance=args.guidance,
                          steps=args.steps, height=args.height, width=args.width, seed=args.seed,
                          progress=not args.quiet)
    to_pil(sampling.decode(sd, lat)[0]).save(args.out)
    print(f"wrote {args.out}")


def run_reconstruct(args: argparse.Namespace) -> None:
    import sampling

    sd = load(args)
    img = load_image(args.image, "image")
    size = working_size(img.width, img.height, args.size or sd.native_size)
    x = to_tensor(img, size)
    z0 = sampling.encode(sd, x)
    lat = sampling.reconstruct(sd, z0, args.prompt, guidance=args.guidance, steps=args.steps, progress=not args.quiet)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    source, recon = to_pil(x[0]), to_pil(sampling.decode(sd, lat)[0])
    vae_only = to_pil(sampling.decode(sd, z0)[0])
    source.save(out / "source.png")
    recon.save(out / "reconstruction.png")
    print(f"PSNR reconstruction vs source: {psnr(recon, source):.2f} dB (VAE alone: {psnr(vae_only, source):.2f} dB)")


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
        elif args.command == "sample":
            run_sample(args)
        else:
            run_reconstruct(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0
