"""`python -m specref demo|edit|sweep|batch|sample|reconstruct`: the parser and the dispatch. Every edit setting's
flag comes from the settings table (specref/settings.py); the work is in commands.py, sweep.py and batch.py."""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import torch

from weights import precision

from ..presets import PRESETS
from ..settings import PROMPTS, SETTINGS, EditConfig, flag, parse_value
from . import demo
from .batch import batch_command
from .commands import load_model, run_edit, run_reconstruct, run_sample
from .jobs import Runtime, make_job
from .metrics import MARGIN
from .sweep import sweep_command

INPUT_FLAGS = ("source", "reference", "reference_mask", "reference_for", "source_mask", "preset", "no_reference",
               "metrics_margin")


class BindFor(argparse.Action):
    """`--for WORDS` binds the --reference before it to target words: {reference index: words}."""

    def __call__(self, parser, namespace, values, option_string=None):
        refs = getattr(namespace, "reference", None) or []
        if not refs:
            parser.error("--for WORDS binds the --reference before it: give --reference first")
        binds = dict(getattr(namespace, self.dest, None) or {})
        if len(refs) - 1 in binds:
            parser.error(f"--for given twice after --reference {refs[-1]}")
        binds[len(refs) - 1] = parse_value("target_words", values)
        setattr(namespace, self.dest, binds)


def default_text(name: str) -> str:
    """A setting's default as --help shows it."""
    value = {f.name: f.default for f in dataclasses.fields(EditConfig)}[name]
    if value is dataclasses.MISSING:
        return "required without --preset"
    if isinstance(value, tuple):
        sep = "-" if name.endswith(("_steps", "_layers")) else ","
        return sep.join(map(str, value)) or "none"
    return "none" if value is None or value == () else repr(value) if value == "" else str(value)


def add_runtime(p: argparse.ArgumentParser, out: str, out_help: str) -> None:
    """--model, --dtype, --device, --quiet, --out, --overwrite."""
    g = p.add_argument_group("runtime")
    g.add_argument("--model", help="diffusers folder, LDM .safetensors/.ckpt, or Hub repo id [the embedded demo model]")
    g.add_argument("--dtype", choices=list(precision.NAMES), help="weights dtype [float16 on CUDA, float32 on CPU]; "
                   "auto: float16 on CUDA, bfloat16 on a CPU with native bf16, else float32 (bfloat16 without native "
                   "support is ~140x slower and warns); float64: the verification mode (docs/spec.md §5)")
    g.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    g.add_argument("--prediction-type", choices=("epsilon", "v_prediction"), help="what an SD 2 single file's "
                   "UNet predicts, where no yaml beside it says (§9.5) [the yaml's, else a printed assumption]")
    g.add_argument("--quiet", action="store_true", help="no progress bars")
    g.add_argument("--out", default=out, help=out_help)
    g.add_argument("--overwrite", action="store_true", help="replace a previous output of specref there (a folder "
                   "holding only what that run wrote, or a file specref wrote); nothing else is ever touched")


def add_edit(p: argparse.ArgumentParser) -> None:
    """The inputs and every setting of the table, by group, with their defaults and sections."""
    g = p.add_argument_group(PROMPTS)
    g.add_argument("--source", required=True, help="source image to edit")
    g.add_argument("--reference", action="append", help="reference image (or an RGBA / on-black cutout); repeat "
                   "for several views, each resized to the source's working size (§3, §8.1)")
    g.add_argument("--reference-mask", action="append", help="its object mask, white = object, or 'auto' (§8.3); "
                   "one per --reference [the reference's non-black / alpha > 0 pixels]")
    g.add_argument("--for", action=BindFor, dest="reference_for", metavar="WORDS", help="target words whose own "
                   "region takes the --reference before it (§8.2) [all references on --target-words]")
    g.add_argument("--preset", choices=sorted(PRESETS), help="settings of a §6 row; flags override")
    g.add_argument("--source-mask", help="edit region on the source (white): the metrics measure outside it")
    g.add_argument("--metrics-margin", type=int, default=MARGIN, metavar="PX", help="dilation of the Local Blend "
                   f"region before the metrics [{MARGIN}]")
    g.add_argument("--no-reference", action="store_true", help="the P2P baseline: no SR-attn (§4.4)")
    groups = {PROMPTS: g}
    for name, s in SETTINGS.items():
        if name in ("use_reference",):
            continue
        group = groups.setdefault(s.group, p.add_argument_group(s.group))
        group.add_argument(flag(name), *map(flag, s.aliases), dest=name, choices=s.choices or None,
                           metavar=None if s.choices else s.metavar, help=f"{s.help} ({s.section}) "
                           f"[{default_text(name)}]")
    p.add_argument("--save-tensors", action="store_true", help="also write tensors.safetensors (latents, mask_t)")


def build_parser() -> argparse.ArgumentParser:
    """The `python -m specref` argument parser."""
    parser = argparse.ArgumentParser(prog="python -m specref", description=__doc__)
    parser.add_argument("--preset-list", action="store_true", help="print the presets and exit")
    sub = parser.add_subparsers(dest="command", metavar="{demo,edit,sweep,batch,sample,reconstruct}")
    d = sub.add_parser("demo", help="the shipped example with the embedded demo model", description=demo.__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    demo.add_arguments(d)
    e = sub.add_parser("edit", help="edit a source image with a reference object (§3-§4)", description="Edit SOURCE "
                       "so that the target words' region becomes the reference object. Defaults in brackets.")
    add_edit(e)
    add_runtime(e, "out", "output folder (edit.png, reconstruction.png, masks, summary.png, run.json) [out]")
    e.add_argument("--inspect", metavar="DIR", help="also draw what the edit computed into DIR (docs/method.md)")
    e.add_argument("--trace", metavar="FILE", help="also write the per-step numbers (README: Seeing inside an edit)")
    w = sub.add_parser("sweep", help="one edit per combination of --vary values, one inversion per stage-1 setting")
    add_edit(w)
    add_runtime(w, "out/sweep", "sweep folder: a folder per run, sheet.png, results.csv [out/sweep]")
    w.add_argument("--vary", action="append", default=[], metavar="NAME=V1,V2", help="a setting or input and its "
                   "values ('|' between values that hold commas); several --vary: every combination")
    w.add_argument("--zip", action="store_true", help="pair the --vary lists (same length) instead of their product")
    b = sub.add_parser("batch", help="the edits of a JSON-lines job file; resumable; runs under torchrun",
                       description="One edit per line of JOBS: a JSON object with source, reference, reference_mask, "
                       "for, source_mask, preset, name, no_reference, metrics_margin and any setting (e.g. "
                       "\"self_replace_steps\": 0.6); paths relative to JOBS. Exit code: the number of failed jobs.")
    b.add_argument("jobs", type=Path, help="JSON-lines job file")
    add_runtime(b, "out/batch", "batch folder: a folder per job and results.csv; a previous batch folder resumes")
    b.add_argument("--save-tensors", action="store_true", help="also write tensors.safetensors for every job")
    s = sub.add_parser("sample", help="text-to-image (checks a model)")
    add_runtime(s, "sample.png", "output PNG file [sample.png]")
    for name, kind, default in (("--prompt", str, None), ("--negative-prompt", str, ""), ("--steps", int, 50),
                                ("--guidance", float, 7.5), ("--height", int, None), ("--width", int, None),
                                ("--seed", int, 0)):
        s.add_argument(name, type=kind, default=default, required=name == "--prompt")
    r = sub.add_parser("reconstruct", help="invert an image and regenerate it; prints the PSNR")
    add_runtime(r, "reconstruction", "output folder [reconstruction]")
    for name, kind, default in (("--image", str, None), ("--prompt", str, ""), ("--steps", int, 50),
                                ("--guidance", float, 1.0), ("--size", int, None)):
        r.add_argument(name, type=kind, default=default, required=name == "--image")
    return parser


def runtime(args: argparse.Namespace) -> Runtime:
    """The runtime flags as a Runtime."""
    return Runtime(args.model, args.dtype, args.device, not args.quiet, getattr(args, "save_tensors", False),
                   args.overwrite, args.prediction_type)


def edit_values(args: argparse.Namespace) -> tuple[dict, dict]:
    """(settings given as flags, parsed; the input flags) of edit and sweep."""
    given = {name: parse_value(name, getattr(args, name)) for name in SETTINGS
             if getattr(args, name, None) is not None}
    inputs = {k: getattr(args, k) for k in INPUT_FLAGS}
    inputs["for"] = inputs.pop("reference_for") or {}
    return given, inputs


def dispatch(args: argparse.Namespace) -> int:
    """Run the parsed command; its exit code."""
    if args.command == "demo":
        for argv in demo.edit_argvs(args):
            code = dispatch(build_parser().parse_args(argv))
            if code:
                return code
        return 0
    rt = runtime(args)
    if args.command == "edit":
        trace, inspect = (Path(p) if p else None for p in (args.trace, args.inspect))
        print(f"wrote {run_edit(make_job(*edit_values(args)), rt, Path(args.out), trace, inspect)}")
    elif args.command == "sweep":
        return sweep_command(lambda: load_model(rt), *edit_values(args), args.vary, args.zip, Path(args.out), rt)
    elif args.command == "batch":
        return batch_command(lambda: load_model(rt), args.jobs, Path(args.out), rt)
    elif args.command == "sample":
        out = run_sample(rt, args.prompt, Path(args.out), args.negative_prompt, args.steps, args.guidance, args.height,
                         args.width, args.seed)
        print(f"wrote {out}")
    else:
        db = run_reconstruct(rt, Path(args.image), Path(args.out), args.prompt, args.steps, args.guidance, args.size)
        print(f"PSNR reconstruction vs source: {db['reconstruction']:.2f} dB (VAE alone: {db['vae_only']:.2f} dB)")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m specref`: one-line errors, exit code 1; Ctrl-C: one line, exit code 130."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.preset_list:
        for name, p in PRESETS.items():
            s = p.settings
            print(f"{name:16} {s['source_prompt']!r} -> {s['target_prompt']!r}  mode={s['mode']} "
                  f"target={','.join(s['target_words'])} thres={s['thres']} sr_steps={s['sr_steps']} "
                  f"sr_layers={s['sr_layers']} masks={s['masks']} interp={s['interp']}")
        return 0
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return dispatch(args)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: nothing of the unfinished work was written", file=sys.stderr)
        return 130
