#!/usr/bin/env python
"""SpecRef benchmarks at SD1.5 or SD 2.1-768 size with random weights (no download), float32 and bfloat16 side by
side.

    python scripts/bench.py [unet|vae|load|edit|sweep|all] [--dtypes float32,bfloat16,auto] [--repeat R]
        [--steps N] [--size S] [--family sd1|sd2]

unet: UNet forward, batch 2 and 4 at a 64x64 latent: ours (fused and explicit) and diffusers' UNet2DConditionModel
      with the same weights in the same dtype (when diffusers is installed).
vae:  our VAE encode and decode of one 512x512 image.
load, edit: in a fresh subprocess per dtype, so that peak RSS belongs to that work alone.
inspect: (first dtype) the edit without and with `--inspect` (recording + pictures), each in a fresh subprocess.
sweep: (fresh subprocess, first dtype) a k = 4 stage-2-only sweep against 4 separate `edit` runs (each with its model
      load and inversion), and a batch of 4 jobs (model loaded once, no shared inversion) against the 4 edits alone.
--dtype D is short for --dtypes D; `auto` is what `--dtype auto` picks on this machine (weights/precision.py),
shown as e.g. "auto=float32". Every table title names the CPU and whether it has native bf16: bfloat16 numbers
depend on it (~1.75x faster than float32 with AVX-512 bf16, ~100x slower without). --size sets the edit's random
source image, S (square) or WxH, e.g. 1024x768
for the large-image memory check; the working size is its long side. --tiny (hidden) swaps in small widths and
sizes so that everything runs in seconds: for checking the code paths, not for numbers.
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
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the project is not installed as a package

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

import specref  # noqa: E402
from specref.app.pictures import write_inspection  # noqa: E402
import weights  # noqa: E402
from weights import precision  # noqa: E402
from weights.save import MODEL_INDEX, save_part  # noqa: E402
from model import VAE, CLIPTextConfig, CLIPTextEncoder, UNet, UNetConfig, VAEConfig  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def dtype_label(name: str) -> str:
    """'auto' -> 'auto=float32' (what auto resolves to on this machine's CPU); other names unchanged."""
    return f"auto={precision.dtype_name(precision.resolve_dtype('auto', 'cpu')[0])}" if name == "auto" else name


def to_dtype(label: str) -> torch.dtype:
    """A dtype name or an 'auto=NAME' label -> torch.dtype."""
    return precision.DTYPES[label.split("=")[-1]]


def cpu_title() -> str:
    """Appended to every table title: the numbers depend on the CPU's bf16 support."""
    return f" — CPU: {precision.cpu_capability()}"
GIB = 2**30
FULL_STEPS = 50  # the paper's step count, for the extrapolated column
PRESET = "mirror-tiger"


@dataclass(frozen=True)
class Sizes:
    """Model widths and input sizes of one benchmark run."""

    unet: UNetConfig
    vae: VAEConfig
    text: CLIPTextConfig
    latent: int  # UNet benchmark latent side
    image: int   # VAE benchmark image side, and the edit's default source size
    name: str = "SD1.5"
    prediction_type: str = "epsilon"


FULL = Sizes(UNetConfig(), VAEConfig(), CLIPTextConfig(), latent=64, image=512)
# SD 2.1-768 (§9): heads 5/10/20/20 of 64 channels, 1024-wide context, linear projections, upcast attention, the
# 23 layers of OpenCLIP-H's text tower that SD 2 reads, v-prediction; the same VAE.
SD21 = Sizes(UNetConfig(heads=(5, 10, 20, 20), cross_attention_dim=1024, use_linear_projection=True, sample_size=96,
                        upcast_attention=True), VAEConfig(),
             CLIPTextConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16,
                            hidden_act="gelu"), latent=96, image=768, name="SD2.1-768", prediction_type="v_prediction")
TINY = Sizes(UNetConfig(block_out_channels=(32, 64, 64, 64), cross_attention_dim=64),
             VAEConfig(block_out_channels=(32, 32, 64, 64)),
             CLIPTextConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=1),
             latent=16, image=128)
TINY2 = Sizes(UNetConfig(block_out_channels=(64, 64, 128, 128), heads=(1, 1, 2, 2), cross_attention_dim=128,
                         use_linear_projection=True, sample_size=16, upcast_attention=True),
              VAEConfig(block_out_channels=(32, 32, 64, 64)),
              CLIPTextConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
                             hidden_act="gelu"), latent=16, image=128, name="tiny SD2", prediction_type="v_prediction")


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


def speedup(sec: float, sec_fp32: float | None) -> str:
    """float32 time / this time."""
    return f"{sec_fp32 / sec:.2f}x" if sec_fp32 else "n/a"


def rel_diff(out: torch.Tensor, ref: torch.Tensor | None) -> str:
    """max |out - ref| / max |ref|."""
    return "n/a" if ref is None else f"{((out - ref).abs().max() / ref.abs().max()).item():.1e}"


FUSED, EXPLICIT, DIFFUSERS = "ours, fused (SDPA)", "ours, explicit softmax", "diffusers UNet2DConditionModel"


def bench_unet(dtypes: list[str], repeat: int, sizes: Sizes) -> str:
    """UNet forward, batch 2 and 4: our fused and explicit paths vs diffusers with the same weights, per dtype."""
    try:
        from diffusers import UNet2DConditionModel
    except ImportError:
        UNet2DConditionModel = None
        print("diffusers is not installed: no reference rows", file=sys.stderr)
    g, n, cdim = torch.Generator().manual_seed(1), sizes.latent, sizes.unet.cross_attention_dim
    inputs = {b: (torch.randn(b, 4, n, n, generator=g), torch.randn(b, 77, cdim, generator=g)) for b in (2, 4)}
    results: dict[tuple[str, int, str], tuple[float, torch.Tensor]] = {}  # (path, batch, dtype) -> (s, output)
    for name in dtypes:
        dtype = to_dtype(name)
        torch.manual_seed(0)  # the same weights in every dtype
        unet = UNet(sizes.unet).eval().requires_grad_(False).to(dtype)
        ref = None
        if UNet2DConditionModel is not None:
            with torch.device("meta"):
                ref = UNet2DConditionModel.from_config(sizes.unet.to_diffusers())
            ref.load_state_dict(unet.state_dict(), strict=True, assign=True)  # shares our tensors: same weights
            ref = ref.eval()
        with torch.no_grad():
            for b, (x, ctx) in inputs.items():
                x, ctx, t = x.to(dtype), ctx.to(dtype), torch.full((b,), 500)
                results[(FUSED, b, name)] = median_time(lambda: unet(x, t, ctx), repeat)
                unet.set_fused(False)
                results[(EXPLICIT, b, name)] = median_time(lambda: unet(x, t, ctx), repeat)
                unet.set_fused(True)
                if ref is not None:
                    results[(DIFFUSERS, b, name)] = median_time(lambda: ref(x, t, ctx).sample, repeat)
        del unet, ref
    results = {key: (sec, out.float()) for key, (sec, out) in results.items()}
    rows = []
    for (path, b, name), (sec, out) in results.items():
        fp32, ours, diff = (results.get(k) for k in ((path, b, "float32"), (FUSED, b, name), (DIFFUSERS, b, name)))
        rows.append([path, b, name, f"{sec:.2f}", speedup(sec, fp32 and fp32[0]),
                     f"{sec / diff[0]:.2f}x" if diff else "n/a", f"{(out - ours[1]).abs().max().item():.1e}",
                     rel_diff(out, fp32 and fp32[1])])
    rows.sort(key=lambda r: (r[1], [FUSED, EXPLICIT, DIFFUSERS].index(r[0])))  # by batch, then path; dtypes in order
    title = f"### UNet forward: {n}x{n} latent, median of {repeat} (after 1 warm-up){cpu_title()}\n\n"
    return title + table(["path", "batch", "dtype", "seconds", "speedup vs float32", "time vs diffusers",
                          "max abs diff vs ours fused", "rel. diff vs float32"], rows)


def bench_vae(dtypes: list[str], repeat: int, sizes: Sizes) -> str:
    """Our VAE encode and decode of one image, per dtype."""
    g, n = torch.Generator().manual_seed(2), sizes.image
    img, z = torch.rand(1, 3, n, n, generator=g) * 2 - 1, torch.randn(1, 4, n // 8, n // 8, generator=g)
    results: dict[tuple[str, str], tuple[float, torch.Tensor]] = {}
    for name in dtypes:
        dtype = to_dtype(name)
        torch.manual_seed(0)  # the same weights in every dtype
        vae = VAE(sizes.vae).eval().requires_grad_(False).to(dtype)
        with torch.no_grad():
            results[("encode", name)] = median_time(lambda: vae.encode(img.to(dtype)), repeat)
            results[("decode", name)] = median_time(lambda: vae.decode(z.to(dtype)), repeat)
        del vae
    results = {key: (sec, out.float()) for key, (sec, out) in results.items()}
    rows = []
    for (call, name), (sec, out) in results.items():
        fp32 = results.get((call, "float32"))
        rows.append([call, name, f"{sec:.2f}", speedup(sec, fp32 and fp32[0]), rel_diff(out, fp32 and fp32[1])])
    rows.sort(key=lambda r: r[0] != "encode")
    return (f"### VAE (ours): one {n}x{n} image, median of {repeat} (after 1 warm-up){cpu_title()}\n\n"
            + table(["call", "dtype", "seconds", "speedup vs float32", "rel. diff vs float32"], rows))


def make_folder(folder: Path, sizes: Sizes) -> int:
    """Write a random model (float32, like released checkpoints) as a diffusers folder; file bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model_index.json").write_text(json.dumps(MODEL_INDEX))
    parts = [("unet", lambda: UNet(sizes.unet), sizes.unet.to_diffusers()),
             ("vae", lambda: VAE(sizes.vae), sizes.vae.to_diffusers()),
             ("text_encoder", lambda: CLIPTextEncoder(sizes.text), sizes.text.to_transformers())]
    torch.manual_seed(0)
    (folder / "scheduler").mkdir(exist_ok=True)
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps({
        "_class_name": "DDIMScheduler", "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
        "num_train_timesteps": 1000, "prediction_type": sizes.prediction_type}))
    return sum(save_part(build(), config, folder, part) for part, build, config in parts)  # one part at a time


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


def parse_size(text: str) -> tuple[int, int]:
    """"S" -> (S, S); "WxH" -> (W, H)."""
    w, _, h = text.lower().partition("x")
    return int(w), int(h or w)


def child_edit(folder: Path, dtype: torch.dtype, steps: int, size: str, feature_dtype: str | None = None,
               inspect: bool = False, references: int = 1) -> dict:
    """(Fresh process) one edit with random WxH images (`references` views of the reference object, §8.1;
    with --inspect's recording and pictures if asked), then one timing of each model call it makes."""
    base = peak_rss()
    sd = weights.load_model(folder, dtype=dtype)
    (w, h), rng = parse_size(size), np.random.default_rng(0)
    src, ref = (Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for _ in range(2))
    mask = np.zeros((h, w), np.uint8)
    mask[h * 5 // 16: h * 11 // 16, w * 5 // 16: w * 11 // 16] = 255  # a centred rectangle
    cfg = specref.PRESETS[PRESET].config(steps=steps, feature_dtype=feature_dtype, size=max(w, h))
    refs = [ref] + [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for _ in range(references - 1)]
    t0 = time.perf_counter()
    reference = ref if references == 1 else [specref.Reference(r, mask=Image.fromarray(mask, "L")) for r in refs]
    result = specref.edit(sd, src, reference, cfg, reference_mask_file=Image.fromarray(mask, "L") if references == 1
                          else None, progress=False, inspect=inspect)
    wall = time.perf_counter() - t0
    if inspect:  # the pictures (the predicted x0 is decoded here), as `edit --inspect` draws them
        with tempfile.TemporaryDirectory() as tmp:
            t1 = time.perf_counter()
            write_inspection(tmp, sd, result.inspection, cfg.source_prompt, cfg.target_prompt, src, ref)
            result.timings["pictures"] = time.perf_counter() - t1
        wall += result.timings["pictures"]
    peak = peak_rss()
    (ww, wh), lat = result.working_size, lambda b: torch.randn(b, 4, result.working_size[1] // 8, ww // 8, dtype=dtype)
    with torch.no_grad():  # plain model calls (no hooks), already warm from the edit
        ctx2, ctx4 = sd.encode_prompts(["a", "b"]), sd.encode_prompts(["", "", "a", "b"])
        calls = {
            "unet_b2": once(lambda: sd.unet(lat(2), 500, ctx2)),
            "unet_b4": once(lambda: sd.unet(lat(4), 500, ctx4)),
            **({"unet_inv": once(lambda: sd.unet(lat(1 + references), 500,
                                                 sd.encode_prompts(["a"] * (1 + references))))}
               if references > 1 else {}),
            "vae_encode_b2": once(lambda: sd.vae.encode(torch.randn(2, 3, wh, ww, dtype=dtype))),
            "vae_decode_b2": once(lambda: sd.vae.decode(lat(2))),
            "text_b2": once(lambda: sd.encode_prompts([cfg.source_prompt, cfg.reference_prompt])),
            "text_b4": once(lambda: sd.encode_prompts(["", "", cfg.source_prompt, cfg.target_prompt])),
        }
    return {"wall": wall, "timings": result.timings, "feature_bytes": result.feature_bytes, "calls": calls,
            "sr_steps": list(result.config.sr_steps), "peak_delta": peak - base, "peak": peak,
            "model_bytes": model_bytes(sd), "working_size": [ww, wh], "references": references}


def run_child(mode: str, folder: Path, args: argparse.Namespace, dtype: str, *extra: str) -> dict:
    """Run a child mode of this script in a fresh interpreter; its last stdout line is a JSON result."""
    cmd = [sys.executable, str(Path(__file__).resolve()), mode, "--folder", str(folder), "--dtype",
           dtype.split("=")[-1],
           "--steps", str(args.steps), "--size", args.size, *extra]
    cmd += ["--feature-dtype", args.feature_dtype] if args.feature_dtype else []
    out = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def bench_load(folder: Path, file_bytes: int, args: argparse.Namespace) -> str:
    """Peak RSS of weights.load_model in a fresh process per dtype, against the weight bytes."""
    rows = []
    for name in args.dtypes:
        r = run_child("child-load", folder, args, name)
        rows.append([name, f"{r['seconds']:.1f} s", gib(r["model_bytes"]), gib(r["lazy_delta"]), gib(r["peak_delta"]),
                     f"{r['peak_delta'] / r['model_bytes']:.2f}x", f"{r['peak_delta'] / file_bytes:.2f}x"])
    return (f"### Load: diffusers folder of float32 safetensors ({gib(file_bytes)}), fresh process per dtype"
            f"{cpu_title()}\n\n"
            + table(["dtype", "load time", "loaded parameters+buffers", "peak RSS growth after load_model",
                     "... after touching every weight", "growth / loaded bytes (target <= 1.3x)",
                     "growth / file bytes"], rows))


def edit_estimate(r: dict, n: int) -> dict:
    """Extrapolate one --steps edit to 50 steps: invert/edit time, UNet calls and reference K/V scale linearly."""
    tm, c, scale = r["timings"], r["calls"], FULL_STEPS / n
    fixed_calls = c["vae_encode_b2"] + c["vae_decode_b2"] + c["text_b2"] + c["text_b4"]
    # one inversion call (batch 2, or 1 + K with K references) + one edit call (batch 4)
    per_step_calls = c.get("unet_inv", c["unet_b2"]) + c["unet_b4"]
    loop = tm["invert"] + tm["edit"]
    sr_n = r["sr_steps"][1] - r["sr_steps"][0]
    sr_full = (lambda s: s[1] - s[0])(specref.PRESETS[PRESET].config(steps=FULL_STEPS).sr_steps)
    extra_feat = r["feature_bytes"] / max(sr_n, 1) * sr_full - r["feature_bytes"]
    return {"scale": scale, "sr": (sr_n, sr_full), "feat_full": r["feature_bytes"] + extra_feat,
            "calls_n": fixed_calls + n * per_step_calls, "calls_full": fixed_calls + FULL_STEPS * per_step_calls,
            "wall_full": r["wall"] - loop + loop * scale, "peak_delta_full": r["peak_delta"] + extra_feat,
            "peak_full": r["peak"] + extra_feat}


def edit_table(r: dict, n: int, dtype: str) -> str:
    """The detailed table of one edit run."""
    e, tm, c = edit_estimate(r, n), r["timings"], r["calls"]
    rows = [["steps", n, FULL_STEPS],
            ["edit wall time", f"{r['wall']:.1f} s", f"{e['wall_full']:.1f} s"],
            *[[f"timings[{k!r}]", f"{v:.1f} s", f"{v * e['scale'] if k in ('invert', 'edit') else v:.1f} s"]
              for k, v in tm.items() if k != "total"],
            ["model calls alone (UNet + VAE + text)", f"{e['calls_n']:.1f} s", f"{e['calls_full']:.1f} s"],
            ["edit / model calls (target <= 1.15)", f"{r['wall'] / e['calls_n']:.2f}",
             f"{e['wall_full'] / e['calls_full']:.2f}"],
            ["feature_bytes (reference K/V)", gib(r["feature_bytes"]), gib(e["feat_full"])],
            ["loaded model bytes", gib(r["model_bytes"]), gib(r["model_bytes"])],
            ["peak RSS growth (load + edit)", gib(r["peak_delta"]), gib(e["peak_delta_full"])],
            ["peak RSS (absolute)", gib(r["peak"]), gib(e["peak_full"])]]
    calls = ", ".join(f"{k} {v:.2f} s" for k, v in c.items())
    w, h = r["working_size"]
    k = r.get("references", 1)
    return (f"### Edit: {PRESET} preset, {w}x{h}, {dtype}" + (f", {k} references" if k > 1 else "")
            + f", fresh process{cpu_title()}\n\n"
            + table(["metric", f"measured ({n} steps)", f"extrapolated to {FULL_STEPS} steps (estimate)"], rows)
            + f"\n\nOne call each (warm, no hooks): {calls}.\nModel calls = {n}x UNet b2 (inversion) + {n}x UNet b4 "
            "(edit) + VAE encode b2 + decode b2 + text b2 + b4. The extrapolation scales invert/edit time, the UNet "
            f"calls and feature_bytes (SR steps {e['sr'][0]} -> {e['sr'][1]}) linearly; peak RSS adds only the "
            "extra features.")


def bench_edit(folder: Path, args: argparse.Namespace) -> str:
    """One full edit per dtype in a fresh process each: the detailed tables, then the dtypes side by side."""
    n, runs = args.steps, {name: run_child("child-edit", folder, args, name) for name in args.dtypes}
    parts, rows = [edit_table(r, n, name) for name, r in runs.items()], []
    for name, r in runs.items():
        e, fp32 = edit_estimate(r, n), runs.get("float32")
        rows.append([name, f"{r['wall']:.1f} s", f"{e['wall_full']:.1f} s", speedup(r["wall"], fp32 and fp32["wall"]),
                     gib(r["feature_bytes"]), gib(r["peak"]), gib(e["peak_full"])])
    w, h = runs[args.dtypes[0]]["working_size"]
    parts.append(f"### Edit by dtype: {PRESET} preset, {w}x{h}, measured at {n} steps{cpu_title()}\n\n"
                 + table(["dtype", f"wall ({n} steps)", f"wall ({FULL_STEPS} steps, estimate)", "speedup vs float32",
                          "reference K/V", f"peak RSS ({n} steps)", f"peak RSS ({FULL_STEPS} steps, estimate)"], rows))
    return "\n\n".join(parts)


def child_sweep(folder: Path, dtype: torch.dtype, steps: int, size: str, k: int = 4) -> dict:
    """(Fresh process) a k-run stage-2-only sweep vs k separate edits (load + edit + write each), and a k-job batch."""
    from specref.app.jobs import EditJob, Runtime
    from specref.app.outputs import write_edit

    (w, h), rng = parse_size(size), np.random.default_rng(0)
    tmp = Path(tempfile.mkdtemp(prefix="specref-bench-sweep-"))
    srcs = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for _ in range(k + 1)]
    mask = np.zeros((h, w), np.uint8)
    mask[h * 5 // 16: h * 11 // 16, w * 5 // 16: w * 11 // 16] = 255
    for i, im in enumerate(srcs):
        im.save(tmp / f"img{i}.png")
    Image.fromarray(mask, "L").save(tmp / "mask.png")
    cfg = specref.PRESETS[PRESET].config(steps=steps, size=max(w, h))
    values = [0.3, 0.4, 0.5, 0.6][:k]
    rt = Runtime(model=str(folder), dtype=str(dtype).removeprefix("torch."), progress=False)
    info = {"model": str(folder), "dtype": rt.dtype, "device": "cpu"}

    def job(i: int, config: specref.EditConfig) -> EditJob:
        return EditJob(tmp / f"img{i}.png", (specref.Reference(tmp / f"img{k}.png", tmp / "mask.png"),), config)

    t0 = time.perf_counter()
    sd = weights.load_model(folder, dtype=dtype)
    load = time.perf_counter() - t0
    loop_sep, sep = 0.0, 0.0  # k separate edits: each would load the model, invert and edit
    for n, v in enumerate(values):
        t0 = time.perf_counter()
        res = specref.edit(sd, tmp / "img0.png", tmp / f"img{k}.png", cfg.replace(self_replace_steps=v),
                           reference_mask_file=tmp / "mask.png", progress=False)
        write_edit(tmp / f"edit{n}", job(0, cfg.replace(self_replace_steps=v)), res, rt, info, 0)
        sep += time.perf_counter() - t0 + load
        loop_sep += res.timings["invert"] + res.timings["edit"]
    t0 = time.perf_counter()
    study = specref.sweep(sd, str(tmp / "img0.png"), str(tmp / f"img{k}.png"), cfg, {"self_replace_steps": values},
                          reference_mask=str(tmp / "mask.png"), out=tmp / "sweep", progress=False, runtime=rt)
    sweep = time.perf_counter() - t0 + load
    loop_sweep = study.runs[0].record["timings_s"]["invert"] + sum(r.record["timings_s"]["edit"] for r in study.runs)
    # batch: k jobs of different sources (no shared inversion), against the same k edits run one by one
    lines = [json.dumps({"source": f"img{i}.png", "reference": f"img{k}.png", "reference_mask": "mask.png",
                         "preset": PRESET, "steps": steps, "size": max(w, h)}) for i in range(k)]
    (tmp / "jobs.jsonl").write_text("\n".join(lines) + "\n")
    t0, single = time.perf_counter(), 0.0
    for i in range(k):
        t1 = time.perf_counter()
        res = specref.edit(sd, tmp / f"img{i}.png", tmp / f"img{k}.png", cfg, reference_mask_file=tmp / "mask.png",
                           progress=False)
        write_edit(tmp / f"single{i}", job(i, cfg), res, rt, info, 0)
        single += time.perf_counter() - t1
    t0 = time.perf_counter()
    specref.run_batch(sd, tmp / "jobs.jsonl", tmp / "batch", progress=False, runtime=rt)
    batch = time.perf_counter() - t0
    assert study.inversions == 1
    return {"k": k, "load": load, "separate": sep, "sweep": sweep, "loop_separate": loop_sep, "loop_sweep": loop_sweep,
            "single_edits": single, "batch": batch}


def bench_inspect(folder: Path, args: argparse.Namespace) -> str:
    """`--inspect`'s cost: the same edit without and with it, each in a fresh process (target: <= 1.3x time,
    <= 1.5x peak memory); the 50-step column scales the invert/edit loops, the pictures are a fixed cost."""
    name = args.dtypes[0]
    plain, seen = (run_child("child-edit", folder, args, name, *flag) for flag in ([], ["--inspect"]))
    ep, es = edit_estimate(plain, args.steps), edit_estimate(seen, args.steps)
    rows = [["wall time", f"{plain['wall']:.1f} s", f"{seen['wall']:.1f} s", f"{seen['wall'] / plain['wall']:.2f}x",
             f"{ep['wall_full']:.1f} s", f"{es['wall_full']:.1f} s", f"{es['wall_full'] / ep['wall_full']:.2f}x"],
            ["of which the pictures", "", f"{seen['timings']['pictures']:.1f} s", "", "",
             f"{seen['timings']['pictures']:.1f} s", ""],
            ["peak RSS", gib(plain["peak"]), gib(seen["peak"]), f"{seen['peak'] / plain['peak']:.2f}x",
             gib(ep["peak_full"]), gib(es["peak_full"]), f"{es['peak_full'] / ep['peak_full']:.2f}x"]]
    w, h = plain["working_size"]
    return (f"### --inspect: {PRESET} preset, {w}x{h}, {name}, fresh process each{cpu_title()}\n\n"
            + table(["", f"edit ({args.steps} steps)", "with --inspect", "ratio (target: time <= 1.3x, peak <= 1.5x)",
                     f"edit ({FULL_STEPS} steps, estimate)", "with --inspect", "ratio"], rows))


def bench_sweep(folder: Path, args: argparse.Namespace) -> str:
    """The sweep and batch timings (measured at --steps, invert/edit loops extrapolated to 50 steps)."""
    r = run_child("child-sweep", folder, args, args.dtypes[0])
    scale = FULL_STEPS / args.steps
    full = lambda wall, loop: wall - loop + loop * scale  # noqa: E731
    sep_f, sw_f = full(r["separate"], r["loop_separate"]), full(r["sweep"], r["loop_sweep"])
    k = r["k"]
    rows = [[f"{k} separate edits (load + invert + edit + write each)", f"{r['separate']:.1f} s", f"{sep_f:.1f} s"],
            [f"sweep of {k} (one load, one inversion)", f"{r['sweep']:.1f} s", f"{sw_f:.1f} s"],
            ["sweep / separate (target <= 0.75)", f"{r['sweep'] / r['separate']:.2f}", f"{sw_f / sep_f:.2f}"],
            [f"batch of {k} jobs / the {k} edits alone, model loaded once (target <= 1.05)",
             f"{r['batch'] / r['single_edits']:.3f}", ""]]
    return (f"### Sweep and batch: {PRESET}, {args.size}, {args.dtypes[0]}, k = {k}, model load {r['load']:.1f} s"
            f"{cpu_title()}\n\n"
            + table(["", f"measured ({args.steps} steps)", f"{FULL_STEPS} steps (estimate)"], rows))


def bench_references(folder: Path, args: argparse.Namespace) -> str:
    """Edits with K = 1..args.references reference views per dtype (§8.1): time and peak RSS side by side."""
    n, parts, rows = args.steps, [], []
    for name in args.dtypes:
        for k in range(1, args.references + 1):
            r = run_child("child-edit", folder, args, name, "--references", str(k))
            e = edit_estimate(r, n)
            parts.append(edit_table(r, n, name))
            rows.append([name, k, f"{r['wall']:.1f} s", f"{e['wall_full']:.1f} s", gib(r["feature_bytes"]),
                         gib(e["feat_full"]), gib(r["peak"]), gib(e["peak_full"])])
    w, h = parse_size(args.size)
    parts.append(f"### Edit by number of references: {PRESET} preset, {w}x{h}, measured at {n} steps{cpu_title()}\n\n"
                 + table(["dtype", "references K", f"wall ({n} steps)", f"wall ({FULL_STEPS} steps, estimate)",
                          f"reference K/V ({n} steps)", f"reference K/V ({FULL_STEPS} steps)",
                          f"peak RSS ({n} steps)", f"peak RSS ({FULL_STEPS} steps, estimate)"], rows)
                 + "\n\nK references are inverted in one batch with the source (1 + K); the kept K/V grow linearly.")
    return "\n\n".join(parts)


def main() -> None:
    """Parse arguments and print the chosen benchmarks' tables."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", nargs="?", default="all",
                   choices=["unet", "vae", "load", "edit", "sweep", "inspect", "all", "child-load", "child-edit",
                            "child-sweep"], metavar="{unet,vae,load,edit,sweep,inspect,all}")
    p.add_argument("--dtypes", default="float32,bfloat16", help="comma-separated model weight dtypes to compare "
                   "(float32, bfloat16, auto)")
    p.add_argument("--dtype", choices=[*DTYPES, "auto"], help="one dtype only (short for --dtypes DTYPE)")
    p.add_argument("--repeat", type=int, default=3, help="timed UNet/VAE runs (median), after one warm-up")
    p.add_argument("--steps", type=int, default=FULL_STEPS, help="edit steps (fewer: extrapolated to 50)")
    p.add_argument("--size", default=None, help="edit source image size, S or WxH (default 512)")
    p.add_argument("--feature-dtype", choices=["float32", "float16", "bfloat16"], default=None,
                   help="dtype of the kept reference K/V in the edit (default: the model's)")
    p.add_argument("--model", type=Path, default=None,
                   help="load/edit/inspect/sweep on this diffusers folder instead of "
                   "random SD1.5-size weights (e.g. assets/toy-sd with --size 128: the demo size)")
    p.add_argument("--inspect", action="store_true", help=argparse.SUPPRESS)  # child-edit: with --inspect
    p.add_argument("--references", type=int, default=None, help="edit: compare K = 1..REFERENCES reference views "
                   "side by side (§8.1)")
    p.add_argument("--family", choices=["sd1", "sd2"], default="sd1", help="random weights at SD1.5 size, or at "
                   "SD 2.1-768 size (768² images, v-prediction) [sd1]")
    p.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # small widths: checks the code paths
    p.add_argument("--folder", type=Path, help=argparse.SUPPRESS)  # child modes only
    args = p.parse_args()
    sizes = {(False, "sd1"): FULL, (False, "sd2"): SD21, (True, "sd1"): TINY, (True, "sd2"): TINY2}[
        (args.tiny, args.family)]
    args.dtypes = [args.dtype] if args.dtype else [d.strip() for d in args.dtypes.split(",") if d.strip()]
    if unknown := [d for d in args.dtypes if d not in DTYPES and d != "auto"]:
        p.error(f"unknown dtype(s) {unknown}; choose from {[*DTYPES, 'auto']}")
    args.dtypes = [dtype_label(d) for d in args.dtypes]
    args.size = args.size or str(sizes.image)
    if args.what.startswith("child-"):
        dtype = to_dtype(args.dtypes[0])
        result = (child_load(args.folder, dtype) if args.what == "child-load"
                  else child_sweep(args.folder, dtype, args.steps, args.size) if args.what == "child-sweep"
                  else child_edit(args.folder, dtype, args.steps, args.size, args.feature_dtype, args.inspect,
                                  args.references or 1))
        print(json.dumps(result))
        return
    for name in args.dtypes:
        precision.warn_slow(to_dtype(name), "cpu")
    print(f"CPU: {precision.cpu_capability()}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, dtypes {', '.join(args.dtypes)}"
          + (" (--tiny: small widths, not SD1.5 numbers)" if args.tiny else "") + "\n", flush=True)
    if args.what in ("unet", "all"):
        print(bench_unet(args.dtypes, args.repeat, sizes) + "\n", flush=True)
    if args.what in ("vae", "all"):
        print(bench_vae(args.dtypes, args.repeat, sizes) + "\n", flush=True)
    if args.what in ("load", "edit", "sweep", "inspect", "all"):
        with tempfile.TemporaryDirectory(prefix="specref-bench-") as tmp:
            folder = args.model or Path(tmp) / "sd15-random"
            if args.model is None:
                t0 = time.perf_counter()
                file_bytes = make_folder(folder, sizes)
                print(f"(wrote a random {'tiny' if args.tiny else sizes.name + '-size'} folder, {gib(file_bytes)}, in "
                      f"{time.perf_counter() - t0:.0f} s)\n", flush=True)
            else:
                file_bytes = sum(f.stat().st_size for f in Path(folder).rglob("*.safetensors"))
                print(f"(model: {folder})\n", flush=True)
            if args.what in ("load", "all"):
                print(bench_load(folder, file_bytes, args) + "\n", flush=True)
            if args.what in ("edit", "all"):
                print((bench_references if args.references else bench_edit)(folder, args) + "\n", flush=True)
            if args.what in ("inspect", "all"):
                print(bench_inspect(folder, args) + "\n", flush=True)
            if args.what in ("sweep", "all"):
                print(bench_sweep(folder, args) + "\n", flush=True)


if __name__ == "__main__":
    main()
