#!/usr/bin/env python
"""SpecRef benchmarks at SD1.5 size with random weights (no download): UNet speed, load memory, one edit.

    python scripts/bench.py [unet|load|edit|all] [--dtype float32|bfloat16] [--repeat R] [--steps N]

`load` and `edit` run in a fresh subprocess each so that peak RSS belongs to that work alone.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the project is not installed as a package

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

import specref  # noqa: E402
import weights  # noqa: E402
from model import VAE, CLIPTextConfig, CLIPTextEncoder, UNet, UNetConfig, VAEConfig  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
GIB = 2**30
FULL_STEPS = 50  # the paper's step count, for the extrapolated column
PRESET = "mirror-tiger"
SIZE = 512
MODEL_INDEX = {"_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.42.1",
               "scheduler": ["diffusers", "DDIMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
               "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
               "vae": ["diffusers", "AutoencoderKL"]}


def peak_rss() -> int:
    """Peak resident set size of this process so far, in bytes."""
    # VmHWM, not ru_maxrss: ru_maxrss keeps the parent's peak across (v)fork + exec, so a child of a big
    # parent (here: the one that just built a 4 GiB model) would report the parent's peak.
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def median_time(fn: Callable[[], torch.Tensor], repeat: int) -> tuple[float, torch.Tensor]:
    """One warm-up call, then the median wall time of `repeat` calls, and the last output."""
    out, times = fn(), []
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def once(fn: Callable[[], object]) -> float:
    """Wall time of a single call."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def table(headers: list[str], rows: list[list[object]]) -> str:
    """A markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


def gib(n: float) -> str:
    """Bytes as GiB with two decimals."""
    return f"{n / GIB:.2f} GiB"


def bench_unet(dtype: torch.dtype, repeat: int) -> str:
    """UNet forward, batch 2 at a 64x64 latent: our fused and explicit paths vs diffusers with the same weights."""
    torch.manual_seed(0)
    unet = UNet(UNetConfig()).eval().requires_grad_(False).to(dtype)
    x, ctx = torch.randn(2, 4, 64, 64, dtype=dtype), torch.randn(2, 77, 768, dtype=dtype)
    t = torch.tensor([500, 500])
    results: dict[str, tuple[float, torch.Tensor]] = {}
    with torch.no_grad():
        results["ours, fused (SDPA)"] = median_time(lambda: unet(x, t, ctx), repeat)
        unet.set_fused(False)
        results["ours, explicit softmax"] = median_time(lambda: unet(x, t, ctx), repeat)
        unet.set_fused(True)
        try:
            from diffusers import UNet2DConditionModel
        except ImportError:
            print("diffusers is not installed: no reference row", file=sys.stderr)
        else:
            with torch.device("meta"):
                ref = UNet2DConditionModel.from_config(UNetConfig().to_diffusers())
            ref.load_state_dict(unet.state_dict(), strict=True, assign=True)  # shares our tensors: same weights
            ref = ref.eval()
            results["diffusers UNet2DConditionModel"] = median_time(lambda: ref(x, t, ctx).sample, repeat)
    base = results.get("diffusers UNet2DConditionModel")
    rows = [[name, f"{sec:.2f}", f"{sec / base[0]:.2f}x" if base else "n/a",
             f"{(out.float() - base[1].float()).abs().max().item():.1e}" if base else "n/a"]
            for name, (sec, out) in results.items()]
    name = str(dtype).removeprefix("torch.")
    title = f"### UNet forward: SD1.5 size, batch 2, 64x64 latent, {name}, median of {repeat} (after 1 warm-up)\n\n"
    return title + table(["path", "seconds", "vs diffusers", "max abs diff vs diffusers"], rows)


def make_folder(folder: Path) -> int:
    """Write a random SD1.5-size model (float32, like released checkpoints) as a diffusers folder; file bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model_index.json").write_text(json.dumps(MODEL_INDEX))
    parts = [("unet", lambda: UNet(UNetConfig()), UNetConfig().to_diffusers(), "diffusion_pytorch_model"),
             ("vae", lambda: VAE(VAEConfig()), VAEConfig().to_diffusers(), "diffusion_pytorch_model"),
             ("text_encoder", lambda: CLIPTextEncoder(CLIPTextConfig()), CLIPTextConfig().to_transformers(), "model")]
    total = 0
    torch.manual_seed(0)
    for part, build, config, stem in parts:  # one part in memory at a time
        (folder / part).mkdir(exist_ok=True)
        (folder / part / "config.json").write_text(json.dumps(config))
        path = folder / part / f"{stem}.safetensors"
        save_file({k: v.contiguous() for k, v in build().state_dict().items()}, str(path))
        total += path.stat().st_size
    return total


def model_bytes(sd: object) -> int:
    """Bytes of every parameter and buffer of the loaded UNet, VAE and text encoder."""
    mods = (sd.unet, sd.vae, sd.text_encoder)
    return sum(t.numel() * t.element_size() for m in mods for t in [*m.parameters(), *m.buffers()])


def child_load(folder: Path, dtype: torch.dtype) -> dict:
    """(Fresh process) load the folder, then read every weight; peak RSS growth over the RSS after imports."""
    base = peak_rss()
    t0 = time.perf_counter()
    sd = weights.load_model(folder, dtype=dtype)
    sec, lazy = time.perf_counter() - t0, peak_rss() - base
    with torch.no_grad():  # safetensors tensors may be mmap-backed: page every weight in, as a first forward would
        for m in (sd.unet, sd.vae, sd.text_encoder):
            for t in [*m.parameters(), *m.buffers()]:
                t.float().sum()
    return {"seconds": sec, "lazy_delta": lazy, "peak_delta": peak_rss() - base, "model_bytes": model_bytes(sd)}


def child_edit(folder: Path, dtype: torch.dtype, steps: int, feature_dtype: str | None = None) -> dict:
    """(Fresh process) one edit at 512x512 with random images, then one timing of each model call it makes."""
    base = peak_rss()
    sd = weights.load_model(folder, dtype=dtype)
    rng = np.random.default_rng(0)
    src, ref = (Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)) for _ in range(2))
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[SIZE * 5 // 16: SIZE * 11 // 16, SIZE * 5 // 16: SIZE * 11 // 16] = 255  # a centred square
    cfg = specref.PRESETS[PRESET].config(steps=steps, feature_dtype=feature_dtype)
    t0 = time.perf_counter()
    result = specref.edit(sd, src, ref, cfg, reference_mask_file=Image.fromarray(mask, "L"), progress=False)
    wall = time.perf_counter() - t0
    peak = peak_rss()
    with torch.no_grad():  # plain model calls (no hooks), already warm from the edit
        ctx2, ctx4 = sd.encode_prompts(["a", "b"]), sd.encode_prompts(["", "", "a", "b"])
        calls = {
            "unet_b2": once(lambda: sd.unet(torch.randn(2, 4, SIZE // 8, SIZE // 8, dtype=dtype), 500, ctx2)),
            "unet_b4": once(lambda: sd.unet(torch.randn(4, 4, SIZE // 8, SIZE // 8, dtype=dtype), 500, ctx4)),
            "vae_encode_b2": once(lambda: sd.vae.encode(torch.randn(2, 3, SIZE, SIZE, dtype=dtype))),
            "vae_decode_b2": once(lambda: sd.vae.decode(torch.randn(2, 4, SIZE // 8, SIZE // 8, dtype=dtype))),
            "text_b2": once(lambda: sd.encode_prompts([cfg.source_prompt, cfg.reference_prompt])),
            "text_b4": once(lambda: sd.encode_prompts(["", "", cfg.source_prompt, cfg.target_prompt])),
        }
    return {"wall": wall, "timings": result.timings, "feature_bytes": result.feature_bytes, "calls": calls,
            "sr_steps": list(result.config.sr_steps), "peak_delta": peak - base, "peak": peak,
            "model_bytes": model_bytes(sd)}


def run_child(mode: str, folder: Path, args: argparse.Namespace) -> dict:
    """Run a child mode of this script in a fresh interpreter; its last stdout line is a JSON result."""
    cmd = [sys.executable, str(Path(__file__).resolve()), mode, "--folder", str(folder), "--dtype", args.dtype,
           "--steps", str(args.steps)] + (["--feature-dtype", args.feature_dtype] if args.feature_dtype else [])
    out = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def bench_load(folder: Path, file_bytes: int, args: argparse.Namespace) -> str:
    """Peak RSS of weights.load_model in a fresh process, against the weight bytes."""
    r = run_child("child-load", folder, args)
    rows = [["weight files (float32 safetensors)", gib(file_bytes)],
            [f"loaded parameters+buffers ({args.dtype})", gib(r["model_bytes"])],
            ["load time", f"{r['seconds']:.1f} s"],
            ["peak RSS growth just after load_model", gib(r["lazy_delta"])],
            ["peak RSS growth after touching every weight", gib(r["peak_delta"])],
            ["peak growth / loaded bytes (target <= 1.3x)", f"{r['peak_delta'] / r['model_bytes']:.2f}x"],
            ["peak growth / file bytes", f"{r['peak_delta'] / file_bytes:.2f}x"]]
    return "### Load: SD1.5-size diffusers folder, fresh process\n\n" + table(["metric", "value"], rows)


def bench_edit(folder: Path, args: argparse.Namespace) -> str:
    """One full edit in a fresh process; measured at --steps and extrapolated to 50 steps."""
    r, n = run_child("child-edit", folder, args), args.steps
    tm, c = r["timings"], r["calls"]
    fixed_calls = c["vae_encode_b2"] + c["vae_decode_b2"] + c["text_b2"] + c["text_b4"]
    per_step_calls = c["unet_b2"] + c["unet_b4"]  # one inversion call (batch 2) + one edit call (batch 4)
    loop, scale = tm["invert"] + tm["edit"], FULL_STEPS / n
    sr_n = r["sr_steps"][1] - r["sr_steps"][0]
    sr_full = (lambda s: s[1] - s[0])(specref.PRESETS[PRESET].config(steps=FULL_STEPS).sr_steps)
    feat_full = r["feature_bytes"] / max(sr_n, 1) * sr_full
    calls_n, calls_full = fixed_calls + n * per_step_calls, fixed_calls + FULL_STEPS * per_step_calls
    wall_full = r["wall"] - loop + loop * scale
    rows = [["steps", n, FULL_STEPS],
            ["edit wall time", f"{r['wall']:.1f} s", f"{wall_full:.1f} s"],
            *[[f"timings[{k!r}]", f"{v:.1f} s", f"{v * scale if k in ('invert', 'edit') else v:.1f} s"]
              for k, v in tm.items() if k != "total"],
            ["model calls alone (UNet + VAE + text)", f"{calls_n:.1f} s", f"{calls_full:.1f} s"],
            ["edit / model calls (target <= 1.15)", f"{r['wall'] / calls_n:.2f}", f"{wall_full / calls_full:.2f}"],
            ["feature_bytes (reference K/V)", gib(r["feature_bytes"]), gib(feat_full)],
            ["loaded model bytes", gib(r["model_bytes"]), gib(r["model_bytes"])],
            ["peak RSS growth (load + edit)", gib(r["peak_delta"]), gib(r["peak_delta"] + feat_full - r["feature_bytes"])],
            ["peak RSS (absolute)", gib(r["peak"]), gib(r["peak"] + feat_full - r["feature_bytes"])]]
    calls = ", ".join(f"{k} {v:.2f} s" for k, v in c.items())
    return (f"### Edit: {PRESET} preset, {SIZE}x{SIZE}, {args.dtype}, fresh process\n\n"
            + table(["metric", f"measured ({n} steps)", f"extrapolated to {FULL_STEPS} steps (estimate)"], rows)
            + f"\n\nOne call each (warm, no hooks): {calls}.\nModel calls = {n}x UNet b2 (inversion) + {n}x UNet b4 "
            "(edit) + VAE encode b2 + decode b2 + text b2 + b4. The extrapolation scales invert/edit time, the UNet "
            f"calls and feature_bytes (SR steps {sr_n} -> {sr_full}) linearly; peak RSS adds only the extra features.")


def main() -> None:
    """Parse arguments and print the chosen benchmarks' tables."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", nargs="?", default="all", choices=["unet", "load", "edit", "all", "child-load", "child-edit"],
                   metavar="{unet,load,edit,all}")
    p.add_argument("--dtype", choices=list(DTYPES), default="float32", help="model weight dtype")
    p.add_argument("--repeat", type=int, default=3, help="timed UNet runs (median), after one warm-up")
    p.add_argument("--steps", type=int, default=FULL_STEPS, help="edit steps (fewer: extrapolated to 50)")
    p.add_argument("--feature-dtype", choices=["float32", "float16", "bfloat16"], default=None,
                   help="dtype of the kept reference K/V in the edit (default: the model's)")
    p.add_argument("--folder", type=Path, help=argparse.SUPPRESS)  # child modes only
    args = p.parse_args()
    dtype = DTYPES[args.dtype]
    if args.what.startswith("child-"):
        result = child_load(args.folder, dtype) if args.what == "child-load" else child_edit(args.folder, dtype, args.steps, args.feature_dtype)
        print(json.dumps(result))
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, dtype {args.dtype}\n", flush=True)
    if args.what in ("unet", "all"):
        print(bench_unet(dtype, args.repeat) + "\n", flush=True)
    if args.what in ("load", "edit", "all"):
        with tempfile.TemporaryDirectory(prefix="specref-bench-") as tmp:
            t0 = time.perf_counter()
            file_bytes = make_folder(Path(tmp) / "sd15-random")
            print(f"(wrote a random SD1.5-size folder, {gib(file_bytes)}, in {time.perf_counter() - t0:.0f} s)\n",
                  flush=True)
            if args.what in ("load", "all"):
                print(bench_load(Path(tmp) / "sd15-random", file_bytes, args) + "\n", flush=True)
            if args.what in ("edit", "all"):
                print(bench_edit(Path(tmp) / "sd15-random", args) + "\n", flush=True)


if __name__ == "__main__":
    main()
