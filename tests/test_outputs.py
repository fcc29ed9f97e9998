"""The output rule (specref/outputs.py): a run never deletes or overwrites what the user made, never writes onto its
inputs, and refuses a bad output path before the model loads. Every case through the CLI, the user's files compared
byte for byte before and after."""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from specref.app.cli import main
from tiny import write_inputs

NO_MODEL = "/nonexistent/model"  # a model that cannot load: a refusal with the output's message came before loading


@pytest.fixture()
def inputs(tmp_path):
    return write_inputs(tmp_path / "in")


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` with its bytes."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def user_folder(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "notes.txt").write_text("my notes")
    (path / "photos").mkdir()
    (path / "photos" / "a.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (path / ".a-mybackup").mkdir()
    (path / ".a-mybackup" / "keep").write_text("keep me")
    return path


def edit_args(d: Path, model, out, *extra) -> list[str]:
    return ["edit", "--model", str(model), "--source", str(d / "s.png"), "--reference", str(d / "r.png"),
            "--reference-mask", str(d / "m.png"), "--preset", "mirror-tiger", "--steps", "3", "--size", "128",
            "--thres", "0.2", "--out", str(out), "--quiet", *extra]


@pytest.mark.parametrize("where", ["user-folder", "cwd", "inputs-folder"])
def test_out_never_deletes_user_files(inputs, tmp_path, capsys, monkeypatch, where):
    target = {"user-folder": lambda: user_folder(tmp_path / "mine"), "inputs-folder": lambda: inputs,
              "cwd": lambda: user_folder(tmp_path / "here")}[where]()
    before = snapshot(target)
    out = target
    if where == "cwd":
        monkeypatch.chdir(target)
        out = Path(".")
    assert main(edit_args(inputs, NO_MODEL, out)) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: --out") and err.count("\n") == 1 and "model" not in err, err
    assert snapshot(target) == before


def test_previous_output_needs_overwrite_and_only_ours_is_replaced(tiny_diffusers_dir, inputs, tmp_path, capsys):
    out = tmp_path / "o"
    assert main(edit_args(inputs, tiny_diffusers_dir, out)) == 0
    first = snapshot(out)
    assert main(edit_args(inputs, NO_MODEL, out)) == 1
    assert "pass --overwrite" in capsys.readouterr().err and snapshot(out) == first
    assert main(edit_args(inputs, tiny_diffusers_dir, out, "--overwrite", "--thres", "0.3")) == 0
    assert json.loads((out / "run.json").read_text())["settings"]["thres"] == 0.3
    (out / "my-notes.txt").write_text("added by the user")
    kept = snapshot(out)
    assert main(edit_args(inputs, NO_MODEL, out, "--overwrite")) == 1
    assert "my-notes.txt" in capsys.readouterr().err and snapshot(out) == kept
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "o"]  # no temporary folder left behind


def test_outputs_never_land_on_inputs(tiny_diffusers_dir, inputs, tmp_path, capsys):
    before = snapshot(inputs)
    prev = tmp_path / "prev"
    assert main(edit_args(inputs, tiny_diffusers_dir, prev)) == 0
    (prev / "s.png").write_bytes((inputs / "s.png").read_bytes())  # the user keeps the source inside an old output
    src = prev / "s.png"
    args = edit_args(inputs, NO_MODEL, prev, "--overwrite")
    args[args.index("--source") + 1] = str(src)
    assert main(args) == 1
    assert "holds the input" in capsys.readouterr().err and src.read_bytes() == before["s.png"]
    for flag in ("--trace", "--inspect"):
        assert main(edit_args(inputs, NO_MODEL, tmp_path / "new", flag, str(inputs / "s.png"), "--overwrite")) == 1
        assert flag in capsys.readouterr().err
    assert snapshot(inputs) == before


@pytest.mark.parametrize("flag,path,match", [
    ("--out", "/proc/specref-out", "cannot write in /proc"),
    ("--out", "FILE", "exists and is not a folder"),
    ("--out", "FILE/under", "is a file, not a folder"),
    ("--trace", "DIR", "is a folder"),
    ("--trace", "FILE", "exists: pass --overwrite"),
    ("--inspect", "FILE", "exists and is not a folder"),
])
def test_bad_output_paths_refused_before_the_model_loads(inputs, tmp_path, capsys, flag, path, match):
    (tmp_path / "file.txt").write_text("user's")
    (tmp_path / "dir").mkdir()
    path = path.replace("FILE", str(tmp_path / "file.txt")).replace("DIR", str(tmp_path / "dir"))
    extra = [] if flag == "--out" else [flag, path]
    out = path if flag == "--out" else tmp_path / "new-out"
    before = snapshot(tmp_path)
    assert main(edit_args(inputs, NO_MODEL, out, *extra)) == 1
    err = capsys.readouterr().err
    assert match in err and err.count("\n") == 1, err
    assert snapshot(tmp_path) == before and not (tmp_path / "new-out").exists()


def test_trace_and_sample_replace_only_their_own_files(tiny_diffusers_dir, inputs, tmp_path, capsys):
    mine = tmp_path / "mine.safetensors"
    mine.write_bytes(b"user data")
    assert main(edit_args(inputs, NO_MODEL, tmp_path / "o", "--trace", str(mine), "--overwrite")) == 1
    assert "not written by specref" in capsys.readouterr().err and mine.read_bytes() == b"user data"
    trace = tmp_path / "t.safetensors"
    assert main(edit_args(inputs, tiny_diffusers_dir, tmp_path / "o", "--trace", str(trace))) == 0
    assert main(edit_args(inputs, tiny_diffusers_dir, tmp_path / "o", "--trace", str(trace), "--overwrite")) == 0
    photo = tmp_path / "photo.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(photo)
    before = photo.read_bytes()
    sample = ["sample", "--model", str(tiny_diffusers_dir), "--prompt", "a cat", "--steps", "2", "--height", "64",
              "--width", "64", "--quiet", "--out"]
    assert main([*sample, str(photo)]) == 1 and "exists" in capsys.readouterr().err
    assert main([*sample, str(photo), "--overwrite"]) == 1 and "not written by specref" in capsys.readouterr().err
    assert photo.read_bytes() == before
    new = tmp_path / "sub" / "s.png"  # its folder is created
    assert main([*sample, str(new)]) == 0 and main([*sample, str(new), "--overwrite"]) == 0


def test_batch_cleanup_removes_only_its_own(tiny_diffusers_dir, inputs, tmp_path, capsys):
    jobs = inputs / "jobs.jsonl"
    jobs.write_text(json.dumps({"source": "s.png", "reference": "r.png", "reference_mask": "m.png", "steps": 2,
                                "preset": "mirror-tiger", "size": 128, "thres": 0.2, "name": "a"}) + "\n")
    before = snapshot(inputs)
    assert main(["batch", str(jobs), "--model", NO_MODEL, "--out", str(inputs), "--quiet"]) == 1
    assert "--out" in capsys.readouterr().err and snapshot(inputs) == before
    out = tmp_path / "b"
    user_folder(out / "a")  # a job named "a" meets a folder of the user's: that job fails, the folder stays
    (out / ".a-mybackup").mkdir()
    (out / ".a-mybackup" / "x").write_text("keep")
    (out / "results.csv").write_text("run\n")  # looks like an older batch folder
    kept = snapshot(out)
    assert main(["batch", str(jobs), "--model", str(tiny_diffusers_dir), "--out", str(out), "--quiet"]) == 1
    assert all(snapshot(out).get(k) == v for k, v in kept.items() if k != "results.csv")
    assert "is not an output of specref" in (out / "results.csv").read_text()


def test_outputs_follow_the_umask(tiny_diffusers_dir, inputs, tmp_path):
    old = os.umask(0o022)
    try:
        out = tmp_path / "o"
        assert main(edit_args(inputs, tiny_diffusers_dir, out, "--save-tensors", "--trace",
                              str(tmp_path / "t.safetensors"))) == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    for p in [*out.iterdir(), tmp_path / "t.safetensors"]:
        assert stat.S_IMODE(p.stat().st_mode) == 0o644, p
