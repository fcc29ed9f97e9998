"""The main job on a fresh machine: a full SpecRef edit end to end, writing out/demo/summary.png.

Until the project's trained demo model ships (assets/toy-sd, used automatically when present), this builds a
*seeded random* model in the SD v1 topology, so the output shows the pipeline running, not a meaningful edit.
Pass --model to use real SD v1 weights instead (diffusers folder, .safetensors/.ckpt, or a Hub repo id).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import weights  # noqa: E402
from model import CLIPTextConfig, CLIPTextEncoder, CLIPTokenizer, StableDiffusion, UNet, UNetConfig, VAE, VAEConfig  # noqa: E402
from specref.cli import main as cli_main  # noqa: E402


def random_model(folder: Path, seed: int = 0) -> Path:
    """A seeded random SD v1-topology model with small widths, saved as a diffusers folder."""
    from weights.save import save_folder

    torch.manual_seed(seed)
    unet = UNet(UNetConfig(block_out_channels=(32, 64, 64, 64), cross_attention_dim=64, sample_size=16))
    vae = VAE(VAEConfig(block_out_channels=(32, 32, 64, 64)))
    text = CLIPTextEncoder(CLIPTextConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                          num_attention_heads=1))
    return save_folder(StableDiffusion(CLIPTokenizer.bundled(), text, unet, vae), folder)


def scene(shape: str, colour: tuple[int, int, int], background: tuple[int, int, int], size: int = 128,
          checker: bool = False) -> tuple[Image.Image, Image.Image]:
    """A synthetic scene with one object, and the object's mask."""
    img = Image.new("RGB", (size, size), background)
    mask = Image.new("L", (size, size), 0)
    box = (size // 4, size // 4, 3 * size // 4, 3 * size // 4)
    for target, fill in ((img, colour), (mask, 255)):
        draw = ImageDraw.Draw(target)
        (draw.ellipse if shape == "circle" else draw.rectangle)(box, fill=fill)
    if checker:
        arr = np.asarray(img).copy()
        yy, xx = np.mgrid[:size, :size]
        dark = ((yy // 8 + xx // 8) % 2 == 0) & (np.asarray(mask) > 0)
        arr[dark] = arr[dark] // 3
        img = Image.fromarray(arr)
    return img, mask


def main() -> int:
    """Make the inputs (and a model if none is given), then run `python -m specref edit`."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", default=None)
    p.add_argument("--out", default=str(ROOT / "out" / "demo"))
    p.add_argument("--steps", type=int, default=20)
    args = p.parse_args()
    work = Path(args.out).parent
    work.mkdir(parents=True, exist_ok=True)
    model = args.model
    if model is None:
        model = str(weights.DEFAULT_MODEL) if (weights.DEFAULT_MODEL / "model_index.json").exists() else None
    if model is None:
        model = str(random_model(work / "random-tiny-sd"))
        print(f"no trained demo model yet: using a seeded random SD v1-topology model at {model}")
    source, _ = scene("circle", (220, 40, 40), (40, 60, 200))
    reference, mask = scene("square", (240, 220, 40), (0, 0, 0), checker=True)
    for name, im in (("source.png", source), ("reference.png", reference), ("reference_mask.png", mask)):
        im.save(work / name)
    return cli_main([
        "edit", "--model", model, "--source", str(work / "source.png"), "--reference", str(work / "reference.png"),
        "--reference-mask", str(work / "reference_mask.png"), "--source-prompt", "a red circle on a blue background",
        "--target-prompt", "a yellow circle on a blue background", "--mode", "replace", "--target-words", "yellow",
        "--blend-words", "red,circle;yellow,circle", "--thres", "0.3", "--steps", str(args.steps),
        "--sr-steps", f"{args.steps // 10}-{args.steps}", "--size", "128", "--out", args.out])


if __name__ == "__main__":
    sys.exit(main())
