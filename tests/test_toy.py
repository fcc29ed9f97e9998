"""The embedded demo model (assets/toy-sd): it loads by default and its edits do what the method says.

Thresholds were chosen from measurements (scripts/eval_toy.py; the numbers are in assets/toy-sd/README.md),
with a margin, and each is far from what the failure it guards against would give.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "scripts")]

import specref  # noqa: E402
import weights  # noqa: E402
from model import StableDiffusion  # noqa: E402

import demo  # noqa: E402
import eval_toy  # noqa: E402
import train_toy  # noqa: E402
from toy_scenes import Scene  # noqa: E402


@pytest.fixture(scope="module")
def toy() -> StableDiffusion:
    return weights.load_model()


@pytest.fixture(scope="module")
def results(toy: StableDiffusion) -> dict[str, specref.EditResult]:
    """The shipped example edited with SpecRef, the P2P baseline and the no-mask_t ablation (50 steps)."""
    runs = {"specref": {}, "baseline": {"use_reference": False}, "no_mask_t": {"masks": "s"}}
    return {k: eval_toy.run_example(toy, eval_toy.example_config(**ch)) for k, ch in runs.items()}


@pytest.fixture(scope="module")
def edits(results) -> dict[str, dict[str, float]]:
    return {k: eval_toy.edit_metrics(r) for k, r in results.items()}


def test_default_model_is_the_embedded_one(toy):
    assert Path(toy.source).resolve() == weights.DEFAULT_MODEL.resolve()
    assert toy.native_size == 128 and toy.dtype == torch.float32
    assert sorted(toy.unet.attention_layers()) == [(b, k) for b in range(16) for k in ("cross", "self")]  # SD v1: 16 blocks
    files = [f for f in weights.DEFAULT_MODEL.rglob("*.safetensors")]
    assert len(files) == 3 and sum(f.stat().st_size for f in files) <= 21 * 2**20


def test_shipped_example_is_drawn_by_the_scene_code(tmp_path):
    demo.write_example(tmp_path)
    for name in ("source.png", "reference.png", "reference_mask.png"):
        assert np.array_equal(np.asarray(Image.open(tmp_path / name)), np.asarray(Image.open(demo.EXAMPLE / name)))


def test_demo_runs_the_example_edit(tmp_path):
    assert demo.main(["--steps", "5", "--out", str(tmp_path / "demo"), "--baseline"]) == 0
    for out in ("demo", "demo-baseline"):
        assert (tmp_path / out / "summary.png").is_file() and Image.open(tmp_path / out / "edit.png").size == (128, 128)


def test_cli_sample_and_reconstruct_use_the_native_size(tmp_path, capsys):
    from specref.cli import main
    assert main(["sample", "--prompt", "a red circle", "--steps", "3", "--out", str(tmp_path / "s.png"), "--quiet"]) == 0
    assert Image.open(tmp_path / "s.png").size == (128, 128)
    assert main(["reconstruct", "--image", str(demo.EXAMPLE / "source.png"), "--prompt", "a red circle on a gray "
                 "background", "--steps", "20", "--out", str(tmp_path / "r"), "--quiet"]) == 0
    db = float(capsys.readouterr().out.split("PSNR reconstruction vs source: ")[1].split(" dB")[0])
    assert db >= 25.0 and Image.open(tmp_path / "r" / "reconstruction.png").size == (128, 128)


def test_text_to_image_follows_colour_words(toy):
    # Measured (scripts/eval_toy.py, 8 prompts x 2 seeds): colour 0.44, shape 0.38, texture 0.56; red, blue,
    # green, purple and white prompts give objects of that colour. Shapes and backgrounds are weak (model card).
    scenes = [Scene("circle", c, "plain", "gray") for c in ("red", "blue", "green")]
    got = [eval_toy.read_scene(eval_toy.sample_image(toy, s.caption(), steps=30)).colour for s in scenes]
    assert sum(g == s.colour for g, s in zip(got, scenes)) >= 2, got


def test_reconstruction_after_inversion(toy):
    rec, vae = eval_toy.reconstruction_psnr(toy, Scene("circle", "red", "plain", "gray"), steps=50)
    assert rec >= 25.0 and vae >= 25.0, (rec, vae)  # measured 30.7 / 30.7 dB (25.7-30.7 over four scenes)


def test_edit_keeps_the_background(edits):
    # Measured: SpecRef 22.6 dB, baseline 25.6 dB outside the dilated object (an unchanged VAE round trip: 30.7).
    assert edits["specref"]["background_psnr"] >= 20.0, edits["specref"]
    assert edits["baseline"]["background_psnr"] >= 23.0, edits["baseline"]


def test_specref_takes_the_reference_colour(edits):
    sr, base = edits["specref"], edits["baseline"]
    # The target prompt names no colour: SpecRef's region takes the reference object's (yellow), away from the
    # source's red; the P2P baseline has only the words (measured: 0.57 vs 1.00 histogram distance).
    assert sr["hist_to_reference"] < sr["hist_to_source"] - 0.2, sr
    assert sr["hist_to_reference"] < base["hist_to_reference"] - 0.2, (sr, base)


def test_without_mask_t_the_reference_leaks(edits):
    # Measured: 17.5 dB without mask_t against 22.6 dB with both masks.
    assert edits["no_mask_t"]["background_psnr"] < edits["specref"]["background_psnr"] - 2.0, edits


def test_bfloat16_edit_agrees_with_float32(results):
    half = eval_toy.run_example(weights.load_model(dtype=torch.bfloat16), eval_toy.example_config())
    assert all(np.isfinite(np.asarray(im)).all() for im in (half.edit, half.reconstruction))
    p, agree = eval_toy.agreement(results["specref"], half)
    assert p >= 30.0 and agree >= 0.98, (p, agree)  # issue 6's targets; measured 47.9 dB, 100 %


def test_training_is_deterministic():
    runs = [train_toy.train(seed=3, vae_steps=2, unet_steps=2, pool=32, log=lambda s: None)[1] for _ in range(2)]
    assert runs[0]["vae_loss_first"] == runs[1]["vae_loss_first"]
    assert runs[0]["unet_loss_first"] == runs[1]["unet_loss_first"]
    other = train_toy.train(seed=4, vae_steps=2, unet_steps=2, pool=32, log=lambda s: None)[1]
    assert other["unet_loss_first"] != runs[0]["unet_loss_first"]  # the seed matters
