"""Every refusal before the work: bad numbers and settings (edit, sweep, batch), bad inputs, the model's own limits
right after it loads; one-line errors, exit code 1, nothing written; Ctrl-C is one line and leaves nothing."""
from __future__ import annotations

import json
import time

import pytest
import torch
from safetensors.torch import load_file

import specref.app.commands
from specref.app.cli import build_parser, main
from tiny import write_inputs

NO_MODEL = "/nonexistent/model"  # a refusal with the setting's message came before the model was loaded


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return write_inputs(tmp_path_factory.mktemp("refusals"))


def edit_args(d, model, out, *extra):
    return ["edit", "--model", str(model), "--source", str(d / "s.png"), "--reference", str(d / "r.png"),
            "--reference-mask", str(d / "m.png"), "--preset", "mirror-tiger", "--steps", "3", "--size", "128",
            "--thres", "0.2", "--out", str(out), "--quiet", *extra]


def refused(capsys, argv, match) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 1 and match in err and err.count("\n") == 1 and err.startswith("error: "), err
    return err


@pytest.mark.parametrize("extra,match", [
    (["--guidance", "nan"], "--guidance must be a finite number >= 0"),
    (["--self-replace-steps", "5"], "--self-replace-steps must be a fraction in [0, 1]"),
    (["--cross-replace-steps", "-1"], "--cross-replace-steps must be a fraction"),
    (["--start-blend", "2"], "--start-blend must be a fraction"),
    (["--blend-th", "5,5"], "--blend-th must be two numbers in [0, 1)"),
    (["--metrics-margin", "-5"], "--metrics-margin must be a whole number of pixels"),
    (["--size", "8192"], "--size must be a multiple of 64 from 64 to 4096"),
    (["--steps", "0"], "--steps must be 1 to 999"),
    (["--steps", "1000"], "--steps must be 1 to 999"),
    (["--thres", "0"], "--thres must be in (0, 1]"),
    (["--sr-steps", "a-b"], "--sr-steps 'a-b'"),
    (["--sr-steps", "2-9"], "--sr-steps 2-9 end after the last of 3 steps"),
    (["--reweight", "tiger=inf"], "--reweight factors must be finite"),
    (["--target-words", "lion"], "word 'lion' is not in the prompt"),
    (["--for", "lion"], "--for: word 'lion' is not in the prompt"),
    (["--reference-mask", "auto"], "2 --reference-mask for 1 --reference"),
    (["--source-mask", "/nonexistent/sm.png"], "source mask file /nonexistent/sm.png does not exist"),
])
def test_bad_settings_are_refused_before_the_model_loads(inputs, tmp_path, capsys, extra, match):
    refused(capsys, edit_args(inputs, NO_MODEL, tmp_path / "o", *extra), match)
    assert not (tmp_path / "o").exists()


def test_baseline_with_nan_guidance(inputs, tmp_path, capsys):
    argv = ["edit", "--model", NO_MODEL, "--source", str(inputs / "s.png"), "--no-reference", "--preset",
            "mirror-tiger", "--guidance", "nan", "--out", str(tmp_path / "o")]
    refused(capsys, argv, "--guidance must be a finite number")


def test_sweep_and_batch_refuse_bad_values(inputs, tmp_path, capsys):
    sweep = ["sweep", *edit_args(inputs, NO_MODEL, tmp_path / "s")[1:]]
    refused(capsys, [*sweep, "--vary", "self-replace-steps=0.5,-1"], "--self-replace-steps must be a fraction")
    refused(capsys, [*sweep, "--vary", "thres=0.2,0.3", "--vary", "steps=3", "--zip"], "--zip needs --vary lists")
    refused(capsys, [*sweep, "--vary", "colour=1"], "unknown setting 'colour'")
    jobs = tmp_path / "jobs.jsonl"
    good = {"source": "s.png", "reference": "r.png", "reference_mask": "m.png", "preset": "mirror-tiger"}
    lines = [{**good, "self_replace_steps": -1}, {**good, "source": None}, {**good, "name": "results.csv"},
             {**good, "name": "a"}, {**good, "name": "a", "thres": 0.3}]
    jobs.write_text("\ufeff" + "\n".join(json.dumps(j) for j in lines) + "\n")  # a byte-order mark: read as text
    for j in lines:
        for k in ("source", "reference", "reference_mask"):
            if j.get(k):
                j[k] = str(inputs / j[k])
    jobs.write_text("\ufeff" + "\n".join(json.dumps(j) for j in lines) + "\n")
    from specref.app.batch import read_jobs
    from specref.app.jobs import Runtime

    runs = read_jobs(jobs, Runtime())
    errors = [r.error or "" for r in runs]
    assert "--self-replace-steps must be a fraction" in errors[0] and "no source image" in errors[1]
    assert "not a folder name" in errors[2] and runs[3].status == "pending" and "also line 4's" in errors[4]
    refused(capsys, ["batch", str(tmp_path), "--model", NO_MODEL, "--out", str(tmp_path / "b")], "is a folder")


def test_small_items(inputs, tmp_path, capsys):
    refused(capsys, ["demo", "--steps", "1", "--out", str(tmp_path / "d")], "demo --steps must be 2 to 999")
    refused(capsys, ["demo", "--steps", "-5", "--out", str(tmp_path / "d")], "demo --steps must be 2 to 999")
    assert "demo" in build_parser().format_help()


def test_the_models_own_limits_right_after_it_loads(tiny_diffusers_dir, inputs, tmp_path, capsys):
    refused(capsys, edit_args(inputs, tiny_diffusers_dir, tmp_path / "o", "--size", "4096"), "needs about")
    refused(capsys, edit_args(inputs, tiny_diffusers_dir, tmp_path / "o", "--map-blocks", "16"),
            "--map-blocks must be cross-attention block indices")
    refused(capsys, edit_args(inputs, tiny_diffusers_dir, tmp_path / "o", "--sr-layers", "10-17"),
            "--sr-layers 10-17 is out of bounds")
    assert not (tmp_path / "o").exists()


def test_a_refusal_costs_far_less_than_the_edit(tiny_diffusers_dir, inputs, tmp_path, capsys):
    t0 = time.perf_counter()
    assert main(edit_args(inputs, tiny_diffusers_dir, tmp_path / "ok")) == 0
    edit = time.perf_counter() - t0
    t0 = time.perf_counter()
    assert main(edit_args(inputs, tiny_diffusers_dir, tmp_path / "bad", "--self-replace-steps", "5")) == 1
    assert main(edit_args(inputs, tiny_diffusers_dir, tmp_path / "ok")) == 1  # an existing output: refused
    refusals = time.perf_counter() - t0
    assert refusals < 0.2 * edit, (refusals, edit)


def test_ctrl_c_is_one_line_and_leaves_nothing(tiny_diffusers_dir, inputs, tmp_path, capsys, monkeypatch):
    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(specref.app.commands, "edit", interrupted)
    assert main(edit_args(inputs, tiny_diffusers_dir, tmp_path / "o")) == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "interrupted" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_saved_tensors_keep_the_runs_precision(tiny_diffusers_dir, inputs, tmp_path):
    assert main(edit_args(inputs, tiny_diffusers_dir, tmp_path / "o", "--dtype", "float64", "--save-tensors")) == 0
    t = load_file(tmp_path / "o" / "tensors.safetensors")
    assert all(v.dtype == torch.float64 for v in t.values())
    run = json.loads((tmp_path / "o" / "run.json").read_text())
    assert run["setting_sources"]["thres"] == "flag" and run["setting_sources"]["mode"] == "preset"
    assert run["setting_sources"]["map_blocks"] == "default" and run["settings"]["map_blocks"] == [4, 5, 7, 8, 9]
    assert run["family"] == "sd1" and run["prediction_type"] == "epsilon"
    assert run["settings"]["reference_thres"] == run["settings"]["auto_mask_thres"] == 0.5  # the earlier name too
