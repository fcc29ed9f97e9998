#!/usr/bin/env python
"""Prove that a refactor changed no number: record an edit's output latents before it, compare after it.

    python scripts/refactor_check.py record before.safetensors     # on the code before the change
    python scripts/refactor_check.py compare before.safetensors    # on the code after it: bit-identical or not

Records the demo model's shipped edit (its flags from assets/examples/toy-checker/edit.json) and the eight presets
on the seeded tiny random model of the tests (needs the test extras), each in float32 and float64, through the
public `specref.edit`. Recorded values are only comparable on the same machine, thread count and torch build:
they are not for the test suite.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import specref  # noqa: E402
import weights  # noqa: E402

EXAMPLE = weights.ASSETS / "examples" / "toy-checker"
KEYS = ("source_inverted", "reconstruction_latent", "edit_latent")


def demo_config(steps: int) -> specref.EditConfig:
    """The shipped example's edit as the demo runs it (its edit.json flags, SR steps scaled)."""
    from specref.app.demo import example_job

    return example_job(steps).config


def runs(tmp: Path):
    """(name, model, source, reference, mask, config) of every recorded edit."""
    from tiny import make_tiny_diffusers, write_inputs

    yield ("demo", None, EXAMPLE / "source.png", EXAMPLE / "reference.png", EXAMPLE / "reference_mask.png",
           demo_config(20))
    tiny = make_tiny_diffusers(tmp / "tiny-sd")
    d = write_inputs(tmp / "inputs")
    for name, preset in specref.PRESETS.items():
        yield (f"tiny-{name}", tiny, d / "s.png", d / "r.png", d / "m.png",
               preset.config(steps=6, size=128, thres=min(0.2, preset.settings["thres"])))


def record_all() -> dict[str, torch.Tensor]:
    """Every run's output latents, float32 and float64."""
    out: dict[str, torch.Tensor] = {}
    models: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, model, src, ref, mask, cfg in runs(Path(tmp)):
            for dtype in (torch.float32, torch.float64):
                key = (str(model), dtype)
                if key not in models:
                    models[key] = weights.load_model(None if model is None else str(model), dtype=dtype)
                res = specref.edit(models[key], src, ref, cfg, reference_mask_file=mask, progress=False)
                tag = f"{name}.{str(dtype).removeprefix('torch.')}"
                for k in KEYS:
                    out[f"{tag}.{k}"] = res.latents[k].detach().cpu().contiguous()
                if res.mask_t is not None:
                    out[f"{tag}.mask_t"] = res.mask_t.detach().cpu().to(torch.uint8).contiguous()
                print(f"{tag}: done", flush=True)
    return out


def main() -> int:
    """record FILE | compare FILE."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=("record", "compare"))
    p.add_argument("file")
    a = p.parse_args()
    from safetensors.torch import load_file, save_file

    now = record_all()
    if a.action == "record":
        meta = {"threads": str(torch.get_num_threads()), "torch": torch.__version__}
        save_file(now, a.file, metadata=meta)
        print(f"recorded {len(now)} tensors to {a.file}")
        return 0
    before = load_file(a.file)
    def same(k: str) -> bool:
        return k in before and k in now and before[k].dtype == now[k].dtype and torch.equal(before[k], now[k])

    differ = [k for k in sorted(set(before) | set(now)) if not same(k)]
    for k in differ:
        if k in before and k in now and before[k].shape == now[k].shape:
            print(f"DIFFERS {k}: max |diff| {float((before[k].double() - now[k].double()).abs().max()):.3g}")
        else:
            print(f"DIFFERS {k}: present before {k in before}, after {k in now}")
    print(f"{len(now) - len(differ)} of {len(set(before) | set(now))} tensors bit-identical")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
