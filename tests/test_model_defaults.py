"""Settings a model carries (docs/spec.md §8.4): a model folder's specref.json sets the map blocks, thres and interp;
precedence flag > preset > model > built-in default, each resolved value's source in run.json; only the model's
settings may be set."""
from __future__ import annotations

import json
import shutil

import pytest

import weights
from specref.app.cli import main
from tiny import write_inputs


@pytest.fixture(scope="module")
def carrying(tiny_diffusers_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("carry") / "model"
    shutil.copytree(tiny_diffusers_dir, folder)
    defaults = {"map_blocks": [10, 11, 12], "thres": 0.9, "interp": "nearest"}
    (folder / "specref.json").write_text(json.dumps({"edit_defaults": defaults}))
    return folder


def run(folder, tmp_path, *extra):
    d = write_inputs(tmp_path / "in")
    out = tmp_path / f"o{len(list(tmp_path.iterdir()))}"
    assert main(["edit", "--model", str(folder), "--source", str(d / "s.png"), "--reference", str(d / "r.png"),
                 "--reference-mask", str(d / "m.png"), "--preset", "mirror-tiger", "--steps", "3", "--size", "128",
                 "--thres", "0.2", "--sr-steps", "1-3", "--quiet", "--out", str(out), *extra]) == 0
    return json.loads((out / "run.json").read_text())


def test_the_model_sets_what_no_flag_or_preset_does(carrying, tmp_path):
    assert weights.load_model(carrying).extra["edit_defaults"]["map_blocks"] == [10, 11, 12]
    run1 = run(carrying, tmp_path)
    assert run1["settings"]["map_blocks"] == [10, 11, 12] and run1["setting_sources"]["map_blocks"] == "model"
    assert run1["settings"]["interp"] == "bilinear" and run1["setting_sources"]["interp"] == "preset"  # beats it
    assert run1["settings"]["thres"] == 0.2 and run1["setting_sources"]["thres"] == "flag"  # a flag beats the model
    assert run1["setting_sources"]["size"] == "flag" and run1["setting_sources"]["mode"] == "preset"
    run2 = run(carrying, tmp_path, "--map-blocks", "4,5,7,8,9", "--interp", "nearest")
    assert run2["settings"]["map_blocks"] == [4, 5, 7, 8, 9] and run2["setting_sources"]["map_blocks"] == "flag"
    assert run2["settings"]["interp"] == "nearest" and run2["setting_sources"]["interp"] == "flag"


def test_a_model_may_set_only_its_own_settings(carrying, tmp_path, capsys):
    bad = tmp_path / "bad"
    shutil.copytree(carrying, bad)
    (bad / "specref.json").write_text(json.dumps({"edit_defaults": {"guidance": 9}}))
    d = write_inputs(tmp_path / "in")
    assert main(["edit", "--model", str(bad), "--source", str(d / "s.png"), "--reference", str(d / "r.png"),
                 "--preset", "mirror-tiger", "--steps", "3", "--size", "128", "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert "specref.json sets 'guidance'; a model can set only map_blocks, thres, interp, size" in err
