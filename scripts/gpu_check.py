#!/usr/bin/env python
"""One command that checks the GPU path end to end: python scripts/gpu_check.py [--steps 50]

On a CUDA device it prints one table:
- model parts (UNet, VAE encode/decode, text encoder, SD1.5 size, random weights) in float16 vs float32 (relative
  error, finite outputs);
- the demo edit (embedded demo model, shipped example) in float16 vs float32: PSNR outside the region, mask_t
  agreement, every output finite;
- the float16 overflow cases SD users hit: VAE decode at 1024², attention logits at large sizes (fused and explicit);
- an SD1.5-size 512² edit of --steps steps (random weights): wall time and peak CUDA memory in float16, and in
  bfloat16 where the GPU supports it.
Without a CUDA device it says so and exits 0. It never downloads anything.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

import specref  # noqa: E402
import weights  # noqa: E402
from model import VAE, CLIPTextEncoder, UNet  # noqa: E402
from model.attention import attention  # noqa: E402

Row = list[str]


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """max |out - ref| / max |ref|, in float32."""
    out, ref = out.float(), ref.float()
    return float((out - ref).abs().max() / ref.abs().max().clamp_min(1e-12))


def finite(*ts: torch.Tensor) -> bool:
    """Every value of every tensor is finite."""
    return all(bool(torch.isfinite(t.float()).all()) for t in ts)


def row(check: str, value: str, ok: bool, note: str = "") -> Row:
    return [check, value, "ok" if ok else "FAIL", note]


@torch.no_grad()
def model_parts(dev: str) -> list[Row]:
    """SD1.5-size UNet, VAE and text encoder, random weights: float16 vs float32 on the device."""
    from bench import FULL

    g = torch.Generator().manual_seed(0)
    x, ctx = torch.randn(2, 4, 64, 64, generator=g), torch.randn(2, 77, FULL.unet.cross_attention_dim, generator=g)
    img, ids = torch.rand(1, 3, 512, 512, generator=g) * 2 - 1, torch.randint(0, 49408, (2, 77), generator=g)
    calls = {"UNet forward (b2, 64² latent)": (lambda: UNet(FULL.unet),
                                               lambda m, dt: m(x.to(dev, dt), 500, ctx.to(dev, dt))),
             "VAE encode (512²)": (lambda: VAE(FULL.vae), lambda m, dt: m.encode(img.to(dev, dt))),
             "VAE decode (64² latent)": (lambda: VAE(FULL.vae), lambda m, dt: m.decode(x[:1].to(dev, dt))),
             "text encoder (b2)": (lambda: CLIPTextEncoder(FULL.text), lambda m, dt: m(ids.to(dev)))}
    rows = []
    for name, (build, call) in calls.items():
        torch.manual_seed(0)
        m = build().eval().to(dev)
        ref = call(m, torch.float32)
        out = call(m.half(), torch.float16)
        e = rel_err(out, ref)
        rows.append(row(f"{name}: float16 vs float32", f"rel. err {e:.1e}", finite(out) and e < 3e-2, "finite, < 3e-2"))
        del m
        torch.cuda.empty_cache()
    return rows


@torch.no_grad()
def demo_edit(dev: str, steps: int) -> list[Row]:
    """The shipped example on the embedded demo model, float16 vs float32."""
    from toy import evaluate, examples

    full = evaluate.run(weights.load_model(dtype=torch.float32, device=dev), examples.CHECKER, steps=steps)
    half = evaluate.run(weights.load_model(dtype=torch.float16, device=dev), examples.CHECKER, steps=steps)
    ag = evaluate.agreement(examples.CHECKER, full, half)
    ok = all(np.isfinite(np.asarray(i, dtype=np.float32)).all() for i in (half.edit, half.reconstruction)) and \
        finite(*half.latents.values())
    return [row("demo edit float16 vs float32: PSNR outside the region", f"{ag['psnr_outside']:.1f} dB",
                ag["psnr_outside"] >= 35, ">= 35 dB (bf16 on CPU: 43.8 dB)"),
            row("demo edit float16 vs float32: mask_t agreement", f"{100 * ag['mask_t']:.1f} %", ag["mask_t"] >= 0.95,
                ">= 95 %"),
            row("demo edit float16: every output finite", str(ok), ok, "latents, edit, reconstruction")]


@torch.no_grad()
def overflow_cases(dev: str) -> list[Row]:
    """float16 cases that overflow in naive SD code: VAE decode at 1024², attention logits over many tokens."""
    from bench import FULL

    torch.manual_seed(0)
    vae = VAE(FULL.vae).eval().to(dev).half()
    z = torch.randn(1, 4, 128, 128, device=dev, dtype=torch.float16) * 4  # 1024² image; large latents as real ones
    out = vae.decode(z)
    rows = [row("VAE decode 1024² in float16", f"finite {finite(out)}", finite(out),
                "mid-block attention over 128² tokens")]
    del vae, out
    torch.cuda.empty_cache()
    heads, c = 8, 320
    for n in (4096, 16384):  # 64² (512² image, first block) and 128² tokens (1024²)
        q, k, v = (torch.randn(1, n, c, device=dev) * 8 for _ in range(3))  # large logits: |q·k|·scale ~ 10^3
        ref = attention(q, k, v, heads, fused=True)
        for fused in (True, False):
            out = attention(q.half(), k.half(), v.half(), heads, fused=fused)
            e = rel_err(out, ref)
            rows.append(row(f"attention {n} tokens, large logits, float16 {'fused' if fused else 'explicit'}",
                            f"rel. err {e:.1e}", finite(out) and e < 5e-2, "finite, < 5e-2 vs float32"))
    return rows


def sd15_edit(dev: str, dtype: torch.dtype, steps: int, folder: Path) -> Row:
    """An SD1.5-size 512² mirror-tiger edit with random weights: wall time and peak CUDA memory."""
    sd = weights.load_model(folder, dtype=dtype, device=dev)
    rng = np.random.default_rng(0)
    src, ref = (Image.fromarray(rng.integers(0, 256, (512, 512, 3), dtype=np.uint8)) for _ in range(2))
    mask = np.zeros((512, 512), np.uint8)
    mask[160:352, 160:352] = 255
    cfg = specref.PRESETS["mirror-tiger"].config(steps=steps, size=512)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    res = specref.edit(sd, src, ref, cfg, reference_mask_file=Image.fromarray(mask, "L"), progress=False)
    torch.cuda.synchronize()
    wall, peak = time.perf_counter() - t0, torch.cuda.max_memory_allocated() / 2**30
    ok = finite(*res.latents.values())
    del sd
    torch.cuda.empty_cache()
    name = str(dtype).removeprefix("torch.")
    return row(f"SD1.5-size 512² {steps}-step edit, {name} (random weights)", f"{wall:.1f} s, peak {peak:.2f} GiB",
               ok, "finite latents")


def table(rows: list[Row]) -> str:
    lines = ["| check | value | result | condition |", "|---|---|---|---|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def main(argv: list[str] | None = None) -> int:
    """Run every check on the first CUDA device; 0 if all pass (or there is no CUDA device), 1 otherwise."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=50, help="steps of the demo edit and the SD1.5-size edit")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check")
        return 0
    dev = "cuda"
    print(f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
          f"bf16 {'supported' if torch.cuda.is_bf16_supported() else 'not supported'}\n", flush=True)
    rows = model_parts(dev) + demo_edit(dev, args.steps) + overflow_cases(dev)
    from bench import FULL, make_folder

    with tempfile.TemporaryDirectory(prefix="specref-gpu-check-") as tmp:
        make_folder(Path(tmp) / "sd15-random", FULL)
        rows.append(sd15_edit(dev, torch.float16, args.steps, Path(tmp) / "sd15-random"))
        if torch.cuda.is_bf16_supported():
            rows.append(sd15_edit(dev, torch.bfloat16, args.steps, Path(tmp) / "sd15-random"))
        else:
            rows.append(["SD1.5-size edit, bfloat16", "n/a", "skipped", "this GPU has no bf16"])
    print(table(rows))
    failed = [r[0] for r in rows if r[2] == "FAIL"]
    print(f"\n{len(failed)} check(s) failed: {', '.join(failed)}" if failed else "\nevery check passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
