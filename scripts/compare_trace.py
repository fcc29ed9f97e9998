#!/usr/bin/env python
"""Compare two edit traces (`python -m specref edit ... --trace FILE`) step by step.

    python scripts/compare_trace.py A.safetensors B.safetensors [--tol 1e-6] [--all]

For each step i it prints the relative difference and PSNR of the latents after the step (both paths), of
the noise predictions, and the agreement of the Local Blend mask and mask_t, then names the first step where
the two part by more than --tol (relative difference of the latents or the noise predictions, or any mask
pixel that differs). The tool to run after changing attention math, or against another implementation that
writes the same keys (README, "Traces"); most useful on two float64 traces (`--dtype float64`), where correct
implementations agree to ~1e-9 and float32 rounding does not hide a one-step or one-layer mistake.
Exit code: 0 if they never part, 1 if they do, 2 if the traces do not fit (keys or shapes).
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from specref.trace import load_trace  # noqa: E402


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| (0 when equal)."""
    a, b = a.double(), b.double()
    d = float((a - b).norm())
    return 0.0 if d == 0 else d / max(float(b.norm()), 1e-300)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB with the peak of |b| as the signal range (inf when equal)."""
    mse = float(((a.double() - b.double()) ** 2).mean())
    peak = float(b.double().abs().max())
    return math.inf if mse == 0 else 10 * math.log10(peak**2 / mse)


def agreement(a: torch.Tensor, b: torch.Tensor) -> float | None:
    """Fraction of equal mask pixels, None where neither has a mask at this step (NaN rows)."""
    na, nb = bool(torch.isnan(a).all()), bool(torch.isnan(b).all())
    if na and nb:
        return None
    if na != nb:
        return 0.0
    return float((a == b).double().mean())


def compare(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], tol: float) -> tuple[list[dict], int | None]:
    """Per-step rows and the first step where the traces part (None if they never do)."""
    for key in ("edit_latents", "eps"):
        if key not in a or key not in b:
            raise ValueError(f"both traces need {key!r}")
        if a[key].shape != b[key].shape:
            raise ValueError(f"{key} shapes differ: {tuple(a[key].shape)} vs {tuple(b[key].shape)}")
    rows, first = [], None
    for i in range(a["eps"].shape[0]):
        la, lb = a["edit_latents"][i + 1], b["edit_latents"][i + 1]
        row = {"step": i, "rel_latents": rel(la, lb), "psnr_recon": psnr(la[0], lb[0]), "psnr_edit": psnr(la[1], lb[1]),
               "rel_eps": rel(a["eps"][i], b["eps"][i])}
        for key in ("blend_mask", "mask_t"):
            row[key] = agreement(a[key][i], b[key][i]) if key in a and key in b else None
        parted = row["rel_latents"] > tol or row["rel_eps"] > tol or any(
            row[k] is not None and row[k] < 1 for k in ("blend_mask", "mask_t"))
        row["parted"] = parted
        rows.append(row)
        if parted and first is None:
            first = i
    return rows, first


def main(argv: list[str] | None = None) -> int:
    """Print the comparison table; exit 1 if the traces part."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--tol", type=float, default=1e-6, help="relative difference that counts as parting [1e-6]")
    p.add_argument("--all", action="store_true", help="print every step (default: up to 3 steps after parting)")
    args = p.parse_args(argv)
    (ta, ma), (tb, mb) = load_trace(args.a), load_trace(args.b)
    try:
        rows, first = compare(ta, tb, args.tol)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    diff = {k for k in set(ma.get("settings", {})) | set(mb.get("settings", {}))
            if ma.get("settings", {}).get(k) != mb.get("settings", {}).get(k)}
    if diff:
        print("settings that differ: " + ", ".join(f"{k}: {ma['settings'].get(k)} vs {mb['settings'].get(k)}"
                                                  for k in sorted(diff)))
    for key in ("source_inverted", "maps_source", "maps_target"):
        if key in ta and key in tb and ta[key].shape == tb[key].shape:
            print(f"{key}: relative difference {rel(ta[key], tb[key]):.2e}")
    print(f"{'step':>4}  {'rel latents':>11}  {'PSNR rec':>8}  {'PSNR edit':>9}  {'rel eps':>9}  {'blend':>6}  "
          f"{'mask_t':>6}")
    fmt = lambda v: "   -  " if v is None else f"{100 * v:5.1f}%"  # noqa: E731
    for r in rows:
        if not args.all and first is not None and r["step"] > first + 3:
            break
        print(f"{r['step']:>4}  {r['rel_latents']:11.2e}  {r['psnr_recon']:8.1f}  {r['psnr_edit']:9.1f}  "
              f"{r['rel_eps']:9.2e}  {fmt(r['blend_mask'])}  {fmt(r['mask_t'])}"
              + ("  <- parts" if r["parted"] else ""))
    if first is None:
        print(f"the traces agree at every step (tolerance {args.tol:g})")
        return 0
    print(f"first step where they part by more than {args.tol:g}: {first}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
