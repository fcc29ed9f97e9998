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
from weights import precision  # noqa: E402
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
    """The shipped example edited with SpecRef, the P2P baseline and two mask ablations (50 steps)."""
    runs = {"specref": {}, "baseline": {"use_reference": False}, "no_mask_t": {"masks": "s"}, "no_mask_s": {"masks": "t"}}
    # the SpecRef run is inspected (issue 17): inspection changes nothing (tests/test_inspect.py), and the
    # pictures' numbers are checked below
    return {k: eval_toy.run_example(toy, eval_toy.example_config(**ch), inspect=k in ("specref", "no_mask_s"))
            for k, ch in runs.items()}


@pytest.fixture(scope="module")
def edits(results) -> dict[str, dict[str, float]]:
    return {k: eval_toy.edit_metrics(r) for k, r in results.items()}


def test_default_model_is_the_embedded_one(toy):
    assert Path(toy.source).resolve() == weights.DEFAULT_MODEL.resolve()
    assert toy.native_size == 128 and toy.dtype == torch.float32
    assert sorted(toy.unet.attention_layers()) == [(b, k) for b in range(16) for k in ("cross", "self")]  # SD v1: 16 blocks
    files = [f for f in weights.DEFAULT_MODEL.rglob("*.safetensors")]
    assert len(files) == 3 and sum(f.stat().st_size for f in files) <= 21 * 2**20


def test_missing_default_model_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(weights, "DEFAULT_MODEL", tmp_path / "toy-sd")
    with pytest.raises(FileNotFoundError, match="embedded demo model is missing .*pip install -e"):
        weights.load_model()


def test_shipped_example_is_drawn_by_the_scene_code(tmp_path):
    demo.write_example(tmp_path)
    for name in ("source.png", "reference.png", "reference_mask.png"):
        assert np.array_equal(np.asarray(Image.open(tmp_path / name)), np.asarray(Image.open(demo.EXAMPLE / name)))


def test_demo_runs_the_example_edit(tmp_path):
    assert demo.main(["--steps", "5", "--out", str(tmp_path / "demo"), "--baseline"]) == 0
    for out in ("demo", "demo-baseline"):
        assert (tmp_path / out / "summary.png").is_file() and Image.open(tmp_path / out / "edit.png").size == (128, 128)


def test_demo_gives_other_models_the_editors_mask_settings():
    # EDIT's map blocks, thres and interp are tuned to the demo model; `demo.py --model` appends SPEC_MASKS.
    toy_cfg, other = (eval_toy.example_config(flags=f) for f in (demo.EDIT, demo.EDIT + demo.SPEC_MASKS))
    assert (toy_cfg.map_blocks, toy_cfg.thres, toy_cfg.interp) == (demo.TOY_MAP_BLOCKS, 0.7, "nearest")
    default = specref.EditConfig("a", "b")
    assert (other.map_blocks, other.thres, other.interp) == (default.map_blocks, default.thres, default.interp)


def test_cli_sample_and_reconstruct_use_the_native_size(tmp_path, capsys):
    from specref.app.cli import main
    assert main(["sample", "--prompt", "a red circle", "--steps", "3", "--out", str(tmp_path / "s.png"), "--quiet"]) == 0
    assert Image.open(tmp_path / "s.png").size == (128, 128)
    assert main(["reconstruct", "--image", str(demo.EXAMPLE / "source.png"), "--prompt", "a red circle on a gray "
                 "background", "--steps", "20", "--out", str(tmp_path / "r"), "--quiet"]) == 0
    db = float(capsys.readouterr().out.split("PSNR reconstruction vs source: ")[1].split(" dB")[0])
    assert db >= 25.0 and Image.open(tmp_path / "r" / "reconstruction.png").size == (128, 128)


def test_text_to_image_follows_the_words(toy):
    # Measured (scripts/eval_toy.py, 8 prompts x 2 seeds): colour 0.81, shape 0.69, kind of texture 0.88,
    # background 1.00; with seed 0 only (this test): 0.75, 0.75, 1.00, 1.00. Chance: 1/7, 1/4, 1/4, 1/6 (the model
    # before offset noise read the background from the starting noise: 0.19). The texture-energy reading of plain
    # vs textured (0.56; seed 0: 0.50) disagrees with the kind reading on this model's samples (model card).
    acc = eval_toy.text_to_image(toy, eval_toy.EVAL_SCENES, seeds=1)
    assert acc["colour"] >= 0.5 and acc["shape"] >= 0.5 and acc["background"] >= 0.75, acc
    assert acc["texture kind"] >= 0.75, acc


def test_reconstruction_after_inversion(toy):
    rec, vae = eval_toy.reconstruction_psnr(toy, Scene("circle", "red", "plain", "gray"), steps=50)
    assert rec >= 25.0 and vae >= 25.0, (rec, vae)  # measured 30.7 / 30.7 dB (25.7-30.7 over four scenes)


def test_edit_keeps_the_background(edits):
    # Measured: SpecRef 30.5 dB, baseline 41.0 dB outside the dilated object (a VAE round trip of the source: 31.1;
    # without mask_t: 10.4). The SpecRef region is a blob a little larger than the circle.
    assert edits["specref"]["background_psnr"] >= 28.0, edits["specref"]
    assert edits["baseline"]["background_psnr"] >= 35.0, edits["baseline"]


@pytest.fixture(scope="module")
def controls(toy: StableDiffusion, edits) -> dict[Scene, dict]:
    """The shipped example's SpecRef edit with other reference stars (plain, striped, dotted; blue and purple
    checkers), measured."""
    checkers = [ref for ref in eval_toy.COLOUR_CONTROLS if ref.texture == "checkered" and ref.colour != "green"]
    refs = [*eval_toy.REFERENCE_CONTROLS, *checkers]
    runs = {ref: eval_toy.edit_metrics(eval_toy.run_example(toy, eval_toy.example_config(), ref)) for ref in refs}
    return {demo.REFERENCE: edits["specref"], **runs}


def test_specref_gives_the_region_the_references_colour_and_pattern(controls, edits):
    # No prompt names a colour or a texture ("a red circle" -> "a circle"); the region takes the reference star's
    # colour and its kind of pattern. Measured (correlation of the region with a drawn checker / stripes / dots,
    # eval_toy.texture_scores): yellow checkered star 0.96 checker (stripes 0.06), striped 0.99 stripes, dotted
    # 0.91 dots, plain: no pattern (0.00 of the region dark); blue and purple checkered: checkers in their colours.
    # The P2P baseline (no reference, the same prompts) draws a plain yellow circle (checker 0.10).
    sr, base = edits["specref"], edits["baseline"]
    assert sr["pattern_source"] == 0.0 and base["pattern_edit"] <= 0.05 and eval_toy.texture_kind(base) == "plain"
    assert sr["hist_to_reference"] < sr["hist_to_source"] - 0.2, sr
    assert sr["like_checkered"] >= base["like_checkered"] + 0.5 and sr["like_checkered"] >= sr["like_striped"] + 0.5
    colours = {ref.caption(): m["colour_edit"] for ref, m in controls.items()}
    assert colours == {ref.caption(): ref.colour for ref in controls}, colours
    kinds = {ref.caption(): eval_toy.texture_kind(m) for ref, m in controls.items()}
    assert kinds == {ref.caption(): ref.texture for ref in controls}, kinds


def test_p2p_edit_changes_the_colour_word(toy):
    # "a red circle" -> "a blue circle", prompt only, refine (measured: blue; colour-histogram distance 0.20 to a
    # drawn blue circle, 1.00 to the red source; background 30.9 dB).
    res = eval_toy.run_example(toy, eval_toy.example_config(flags=eval_toy.COLOUR_EDIT, use_reference=False))
    m = eval_toy.colour_edit_metrics(res)
    assert m["colour"] == "blue" and m["hist_to_blue"] < m["hist_to_source"] - 0.3, m
    assert m["background_psnr"] >= 28.0, m


def test_mask_ablations(edits):
    # The paper's ablations (SPEC §4.4). Without mask_t every target pixel attends to the reference object and the
    # edit spreads over the image (measured background 10.4 dB against 30.5 with both masks). Without mask_s the
    # region attends to the whole reference image, its black background too, and loses the reference's look
    # (it turns orange: colour-histogram distance to the reference object 0.83 against 0.71; pattern 0.27 against
    # 0.48, the reference 0.50).
    assert edits["no_mask_t"]["background_psnr"] < edits["specref"]["background_psnr"] - 10.0, edits
    no_s, sr = edits["no_mask_s"], edits["specref"]
    assert no_s["hist_to_reference"] > sr["hist_to_reference"] + 0.05, edits
    assert no_s["pattern_edit"] < sr["pattern_edit"] - 0.1, edits


def test_mask_t_finds_the_circle_at_the_models_word_level(toy):
    # mask_t (SPEC §4.4) at this model's word level, up block 3's 16x16 cross-attention (eval_toy.TOY_MAP_BLOCKS,
    # the demo's --map-blocks), against SPEC's latent/4 level (4x4 maps here). Measured IoU with the example's red
    # circle: 0.39 against 0.00. (For an off-centre square and triangle both are near 0: this model's words
    # localise poorly, a limit stated in the model card.)
    circle = eval_toy.MASK_T_SCENES[0]
    ious = {blocks: eval_toy.mask_t_iou(toy, circle, eval_toy.example_config(map_blocks=blocks))
            for blocks in (eval_toy.TOY_MAP_BLOCKS, specref.config.BLEND_BLOCKS)}
    assert ious[eval_toy.TOY_MAP_BLOCKS] >= 0.25 and ious[specref.config.BLEND_BLOCKS] <= 0.15, ious


def test_inspection_shows_where_the_word_and_the_reference_are(results):
    """--inspect's pictures on the demo edit, measured (AMD EPYC Zen 3, float32): the "circle" tile's mass above
    its minimum is 0.30 inside the circle (its area: 0.20); SR-attn's reference mass is 0.66 / 0.79 on the
    reference star (8x8 / 16x16 layers; the star is 0.13 of the image), and without mask_s it spreads over the
    reference's background (0.21 / 0.18): mask_s is what keeps the reference's background out."""
    m = eval_toy.inspection_metrics(results["specref"])
    assert m["word_mass_inside"] > 0.25 > m["source_object_area"] + 0.03
    on_object = [v for k, v in m.items() if k.startswith("reference_mass_on_object")]
    assert len(on_object) == 2 and min(on_object) > 0.55
    spread = [v for k, v in eval_toy.inspection_metrics(results["no_mask_s"]).items()
              if k.startswith("reference_mass_on_object")]
    assert max(spread) < 0.35 < min(on_object)


@pytest.mark.skipif(not precision.cpu_bf16_native(), reason="no native bf16 on this CPU (no avx512_bf16 / amx_bf16): "
                    "a bfloat16 edit runs ~100x slower than float32 here")
def test_bfloat16_edit_agrees_with_float32(results, edits):
    half = eval_toy.run_example(weights.load_model(dtype=torch.bfloat16), eval_toy.example_config())
    assert all(np.isfinite(np.asarray(im)).all() for im in (half.edit, half.reconstruction))
    full = results["specref"]
    ag = eval_toy.agreement(full, half)
    # Measured: PSNR 49.5 dB outside the region, 32.9 dB over the whole image, mask_t 98.8 %; the edit measures
    # the same (pattern 0.483 vs 0.481).
    assert ag["psnr_outside"] >= 35.0 and ag["mask_t"] >= 0.95, ag
    assert abs(eval_toy.edit_metrics(half)["pattern_edit"] - edits["specref"]["pattern_edit"]) <= 0.1


def test_training_is_deterministic(tmp_path):
    def run(seed, stage2=None, hide_pattern=0.0):
        return train_toy.train(seed=seed, vae_steps=2, unet_steps=2, sr_steps=2, pool=32, log=lambda s: None,
                               stage2=stage2, hide_pattern=hide_pattern)[1]

    runs = [run(3) for _ in range(2)]
    for stage in ("vae", "unet", "sr"):
        assert len(runs[0][f"{stage}_loss_first"]) == 2
        assert runs[0][f"{stage}_loss_first"] == runs[1][f"{stage}_loss_first"]
    other = run(4)
    assert other["unet_loss_first"] != runs[0]["unet_loss_first"]  # the seed matters
    assert other["sr_loss_first"] != runs[0]["sr_loss_first"]
    # --stage2: a run that writes stages 1-2 and one that loads them give the same stage 3
    cache = tmp_path / "stage2.pt"
    written, loaded = run(3, cache), run(3, cache)
    assert "stages_1_2_loaded_from" not in written and loaded["stages_1_2_loaded_from"] == str(cache)
    assert written["sr_loss_first"] == loaded["sr_loss_first"] == runs[0]["sr_loss_first"]
    assert loaded["unet_loss_first"] == runs[0]["unet_loss_first"]
    with pytest.raises(ValueError, match="stage2.pt holds stages 1-2 trained with .*'seed': 3"):
        run(4, cache)
    # --hide-pattern changes only stage 3, and deterministically
    hidden = [run(3, cache, hide_pattern=1.0) for _ in range(2)]
    assert hidden[0]["sr_loss_first"] == hidden[1]["sr_loss_first"] != runs[0]["sr_loss_first"]
    assert hidden[0]["unet_loss_first"] == runs[0]["unet_loss_first"] and hidden[0]["sr_hide_pattern"] == 1.0
    with pytest.raises(ValueError, match="hide_pattern is a fraction .* got 1.5"):
        run(3, hide_pattern=1.5)
    with pytest.raises(ValueError, match="hide_pattern needs `plain`"):  # before any training
        train_toy.train_reference_attention(None, None, None, None, None, [], 1, 0, hide_pattern=0.5, plain=None)


# ---- issue 19: references as users have them (scripts/eval_refs.py; numbers in assets/toy-sd/README.md) -----
@pytest.fixture(scope="module")
def auto_example(toy: StableDiffusion) -> dict:
    """The shipped example with its reference star's mask found by its own cross-attention ("star")."""
    import eval_refs
    from toy_scenes import draw

    img, drawn = draw(demo.REFERENCE, toy.native_size)
    cfg = eval_toy.example_config(reference_prompt=demo.REFERENCE.caption(), reference_words=("star",))
    res, maps, tokens = eval_refs.auto_edit(toy, cfg, img)
    return {"iou": eval_refs.iou(res.mask_s, np.asarray(drawn) > 127), **eval_toy.edit_metrics(res)}


def test_auto_mask_s_on_the_example(auto_example):
    # Measured: IoU 0.27 with the drawn star mask (--reference-thres 0.5; the model's 16² word maps are coarse);
    # the edit keeps the drawn mask's result, a yellow checker (background 26.2 dB, drawn mask 30.5 dB).
    m = auto_example
    assert m["iou"] >= 0.2, m
    assert (m["colour_edit"], eval_toy.texture_kind(m)) == ("yellow", "checkered"), m
    assert m["background_psnr"] >= 23.0, m


def test_auto_mask_keeps_a_busy_background_out(toy: StableDiffusion):
    # A reference star on random green/blue blocks and no mask: with all-ones mask_s the edit region takes some of
    # the background's hues; with `auto` none. Measured (fraction of the eroded circle): all ones 0.0118, auto 0.
    import eval_refs

    img, _ = eval_refs.busy_reference(toy.native_size)
    inside, _ = eval_toy.source_regions(toy.native_size)
    cfg = eval_toy.example_config(reference_prompt="a yellow checkered star", reference_words=("star",))
    auto, _, _ = eval_refs.auto_edit(toy, cfg, img)
    ones, _, _ = eval_refs.auto_edit(toy, cfg.replace(reference_prompt=""), img, mask=np.ones((128, 128), bool))
    a, o = (eval_refs.background_fraction(r.edit, inside) for r in (auto, ones))
    assert a <= 0.002 and o >= 0.006, (a, o)
