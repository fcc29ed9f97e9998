"""The command line: outputs, run.json, tensors, flag overrides, and no partial output on errors."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from specref.app.cli import build_parser, edit_values, main
from specref.app.jobs import make_job
from tiny import write_inputs


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return write_inputs(tmp_path_factory.mktemp("cli"))


def args_for(d, model, out, *extra):
    return ["edit", "--model", str(model), "--source", str(d / "s.png"), "--reference", str(d / "r.png"),
            "--reference-mask", str(d / "m.png"), "--preset", "mirror-tiger", "--steps", "5", "--size", "128",
            "--thres", "0.2", "--out", str(out), "--quiet", *extra]


def test_edit_writes_every_output(tiny_diffusers_dir, inputs, tmp_path):
    out = tmp_path / "o"
    assert main(args_for(inputs, tiny_diffusers_dir, out, "--save-tensors")) == 0
    names = {p.name for p in out.iterdir()}
    assert names == {"edit.png", "reconstruction.png", "mask_s.png", "mask_t.png", "summary.png", "run.json",
                     "region.png",
                     "tensors.safetensors"}
    assert Image.open(out / "edit.png").size == (120, 90)
    run = json.loads((out / "run.json").read_text())
    assert run["settings"]["thres"] == 0.2 and run["settings"]["mode"] == "replace" and run["preset"] == "mirror-tiger"
    assert len(run["sha256"]["source"]) == 64 and "torch" in run["versions"]
    t = load_file(out / "tensors.safetensors")
    assert t["source_inverted"].shape == (6, 4, 16, 16) and t["edit_latent"].shape == (1, 4, 16, 16)
    assert t["mask_t"].shape == (16, 16) and set(t["mask_t"].unique().tolist()) <= {0.0, 1.0}
    assert all(v.dtype == torch.float32 for v in t.values())


def test_error_leaves_no_output(tiny_diffusers_dir, inputs, tmp_path, capsys):
    out = tmp_path / "bad"
    assert main(args_for(inputs, tiny_diffusers_dir, out, "--target-words", "lion")) == 1
    assert "word 'lion' is not in the prompt" in capsys.readouterr().err
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_flags_override_preset():
    a = build_parser().parse_args(["edit", "--source", "s", "--reference", "r", "--preset", "dogshirt-bed",
                                   "--thres", "0.7", "--sr-layers", "12-16", "--blend-words", "board;mattress",
                                   "--masks", "s", "--steps", "25"])
    cfg = make_job(*edit_values(a)).config
    assert (cfg.thres, cfg.sr_layers, cfg.blend_words, cfg.masks, cfg.steps) == (
        0.7, (12, 16), (("board",), ("mattress",)), "s", 25)
    assert cfg.sr_steps == (4, 25) and cfg.mode == "refine"  # preset's 8-50 of 50 steps scaled to 25
    assert cfg.map_blocks is None  # the model's map blocks (§8.4), else §4.3's 4, 5, 7, 8, 9, unless asked
    for text, blocks in (("10-13", (10, 11, 12)), ("4,5,7,8,9", (4, 5, 7, 8, 9))):
        a = build_parser().parse_args(["edit", "--source", "s", "--reference", "r", "--preset", "vase-vase",
                                       "--map-blocks", text])
        assert make_job(*edit_values(a)).config.map_blocks == blocks


def test_preset_list(capsys):
    assert main(["--preset-list"]) == 0
    assert capsys.readouterr().out.count("\n") == 8


def test_two_references_one_per_word(tiny_diffusers_dir, inputs, tmp_path):
    out, r = tmp_path / "two", str(inputs / "r.png")
    assert main(args_for(inputs, tiny_diffusers_dir, out, "--for", "tiger", "--reference", r, "--reference-mask",
                         "auto", "--for", "mirror", "--reference-prompt", "a mirror", "--reference-words",
                         "mirror")) == 0
    names = {p.name for p in out.iterdir()}
    assert {"mask_s_1.png", "mask_s_2.png", "mask_t.png", "mask_t_tiger.png", "mask_t_mirror.png",
            "summary.png"} <= names and "mask_s.png" not in names
    run = json.loads((out / "run.json").read_text())
    assert run["inputs"]["for"] == [["tiger"], ["mirror"]] and run["inputs"]["reference_mask"][1] == "auto"
    assert run["settings"]["target_words"] == ["tiger", "mirror"]
    tiger, mirror = (np.asarray(Image.open(out / f"mask_t_{w}.png")) > 127 for w in ("tiger", "mirror"))
    assert not (tiger & mirror).any()


@pytest.mark.parametrize("extra,match", [
    (["--reference-mask", "m.png"], "2 --reference-mask for 1 --reference"),
    (["--for", "lion"], "word 'lion' is not in the prompt"),
    (["--for", "tiger", "--reference", "r.png", "--reference-mask", "m.png", "--for", "tiger,mirror"],
     "'tiger' is bound twice"),
    (["--for", "tiger,tiger"], "same word twice"),
    (["--reference", "r.png", "--reference-mask", "auto"], "an auto mask needs its words"),
])
def test_bad_references_leave_no_output(tiny_diffusers_dir, inputs, tmp_path, capsys, extra, match):
    out = tmp_path / "bad"
    extra = [str(inputs / e) if e.endswith(".png") else e for e in extra]
    assert main(args_for(inputs, tiny_diffusers_dir, out, *extra)) == 1
    assert match in capsys.readouterr().err
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_for_needs_a_reference_before_it():
    with pytest.raises(SystemExit):
        build_parser().parse_args(["edit", "--source", "s", "--for", "tiger", "--reference", "r"])


def test_earlier_names_are_aliases():
    from specref import EditConfig, Reference
    from specref.app.jobs import split_job

    a = build_parser().parse_args(["edit", "--source", "s", "--reference", "r", "--reference-mask", "auto",
                                   "--preset", "mirror-tiger", "--reference-prompt", "a tiger",
                                   "--reference-words", "tiger", "--reference-thres", "0.3"])
    cfg = make_job(*edit_values(a)).config
    assert (cfg.auto_mask_words, cfg.auto_mask_thres) == (("tiger",), 0.3)
    assert (cfg.reference_words, cfg.reference_thres) == (("tiger",), 0.3)  # read under the earlier names
    given, _ = split_job({"reference-thres": 0.4, "reference_words": "cat"})
    assert given == {"auto_mask_thres": 0.4, "auto_mask_words": ("cat",)}
    assert EditConfig("a", "b", reference_thres=0.2).replace(reference_words=("x",)).auto_mask_words == ("x",)
    r = Reference("r.png", words="tiger", mask_words=("tiger",))
    assert (r.target_words, r.auto_mask_words, r.words, r.mask_words) == (("tiger",),) * 4
