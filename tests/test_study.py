"""Sweeps and batches on the seeded tiny model: runs equal `edit`, inversions are shared, batches resume,
bad jobs fail alone, torchrun's ranks give the single process's outputs."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors.torch import load_file

import specref
from specref.app.cli import main
from specref.app.sweep import parse_vary, split_values
from specref.settings import parse_value as parse_flag
from tiny import write_inputs

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    d = write_inputs(tmp_path_factory.mktemp("study"), (96, 128), seed=2)
    sm = np.zeros((96, 128), np.uint8)
    sm[30:70, 40:90] = 255
    Image.fromarray(sm).save(d / "sm.png")
    return d


def edit_flags(d, model, *extra):
    return ["--model", str(model), "--source", str(d / "s.png"), "--reference", str(d / "r.png"), "--reference-mask",
            str(d / "m.png"), "--preset", "mirror-tiger", "--steps", "4", "--size", "128", "--thres", "0.2",
            "--quiet", "--save-tensors", *extra]


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def assert_same_run(a: Path, b: Path):
    """Two run folders hold the same files, pixel-identical images and bit-identical tensors and metrics."""
    assert {p.name for p in a.iterdir()} == {p.name for p in b.iterdir()}
    for name in ("edit.png", "reconstruction.png", "mask_t.png", "region.png"):
        assert np.array_equal(np.asarray(Image.open(a / name)), np.asarray(Image.open(b / name))), name
    ta, tb = load_file(a / "tensors.safetensors"), load_file(b / "tensors.safetensors")
    assert all((ta[k] == tb[k]).all() for k in ta)
    ra, rb = (json.loads((p / "run.json").read_text()) for p in (a, b))
    assert ra["settings"] == rb["settings"]
    for k in ("psnr_outside", "ssim_outside", "region_area", "region"):
        assert ra["metrics"][k] == rb["metrics"][k], k


def test_vary_parsing():
    assert split_values("0.3,0.5") == ["0.3", "0.5"] and split_values("4,5,7|13,14") == ["4,5,7", "13,14"]
    v = parse_vary(["sr-steps=4-50,10-50", "map_blocks=4,5,7|13,14,15", "blend-words=cat;tiger|cat,mirror;tiger"])
    assert v == {"sr_steps": ["4-50", "10-50"], "map_blocks": ["4,5,7", "13,14,15"],
                 "blend_words": ["cat;tiger", "cat,mirror;tiger"]}
    assert parse_flag("map_blocks", "13-16") == (13, 14, 15)
    # JSON values of a job line: as the flag's text
    assert parse_flag("sr_steps", [4, 50]) == (4, 50) and parse_flag("blend_words", [["cat"], ["tiger"]]) == (
        ("cat",), ("tiger",))
    assert parse_flag("self-replace-steps", 0.6) == 0.6 and parse_flag("target_words", ["a", "b"]) == ("a", "b")
    for bad, msg in ((("masks", "x"), "--masks must be one of both, s, t, none"),
                     (("sr_steps", "a-b"), "--sr-steps 'a-b'"), (("colour", "1"), "unknown setting 'colour'"),
                     (("self_replace_steps", "nan"), "must be a fraction")):
        with pytest.raises(ValueError, match=msg):
            parse_flag(*bad)
    with pytest.raises(ValueError, match="NAME=V1"):
        parse_vary(["thres"])


def test_sweep_equals_edit_and_inverts_once(tiny_diffusers_dir, inputs, tmp_path):
    """A stage-2-only sweep: one inversion with the union of the runs' SR steps; each run = the same `edit`."""
    out = tmp_path / "sweep"
    code = main(["sweep", *edit_flags(inputs, tiny_diffusers_dir), "--out", str(out), "--zip",
                 "--vary", "self-replace-steps=0.3,0.7", "--vary", "sr-steps=0-4,2-4"])
    assert code == 0
    rows = read_csv(out / "results.csv")
    assert [(r["self_replace_steps"], r["sr_steps"], r["status"], r["inversion"]) for r in rows] == [
        ("0.3", "0-4", "done", "0"), ("0.7", "2-4", "done", "0")]
    assert rows[0]["region"] == "blend+8px" and float(rows[0]["total_s"]) > 0 and int(rows[0]["peak_memory_bytes"]) > 0
    assert Image.open(out / "sheet.png").width > 2 * 160
    for r, (srs, sr) in zip(rows, [("0.3", "0-4"), ("0.7", "2-4")]):
        one = tmp_path / f"edit-{srs}"
        assert main(["edit", *edit_flags(inputs, tiny_diffusers_dir), "--out", str(one), "--self-replace-steps", srs,
                     "--sr-steps", sr]) == 0
        assert_same_run(out / r["out"], one)
    # the Python API counts its inversions; a stage-1 setting that differs forces a second one
    res = specref.sweep(specref_sd(tiny_diffusers_dir), str(inputs / "s.png"), str(inputs / "r.png"),
                        specref.PRESETS["mirror-tiger"].config(steps=4, size=128, thres=0.2),
                        {"inversion-guidance": ["1", "1.5"], "thres": [0.2, 0.3]}, zip=True,
                        reference_mask=str(inputs / "m.png"), out=tmp_path / "sweep2", progress=False,
                        runtime={"save_tensors": True, "model": str(tiny_diffusers_dir)})
    assert res.inversions == 2 and [r.inversion for r in res.runs] == [0, 1] and not res.failed
    one = tmp_path / "edit-ig"
    assert main(["edit", *edit_flags(inputs, tiny_diffusers_dir), "--out", str(one), "--inversion-guidance", "1.5",
                 "--thres", "0.3"]) == 0
    assert_same_run(res.out / res.runs[1].name, one)


_SD = {}


def specref_sd(folder):
    """The model as the CLI loads it (float32, CPU), loaded once for this module."""
    import torch

    import weights

    if folder not in _SD:
        _SD[folder] = weights.load_model(str(folder), dtype=torch.float32, device="cpu")
    return _SD[folder]


def write_jobs(path: Path, jobs: list) -> Path:
    path.write_text("\n".join(j if isinstance(j, str) else json.dumps(j) for j in jobs) + "\n")
    return path


GOOD = {"source": "s.png", "reference": "r.png", "reference_mask": "m.png", "preset": "mirror-tiger", "steps": 3,
        "size": 128, "thres": 0.2}


def test_batch_resumes_after_a_crash(tiny_diffusers_dir, inputs, tmp_path):
    jobs = write_jobs(inputs / "resume.jsonl", [GOOD, {**GOOD, "self_replace_steps": 0.7},
                                                 {**GOOD, "sr-steps": "1-3", "name": "third"}])
    out, seen = tmp_path / "b", []
    rt = {"model": str(tiny_diffusers_dir), "save_tensors": False}

    def crash_after_two(run):
        seen.append(run.name)
        if len(seen) == 2:
            raise KeyboardInterrupt("killed after job 2")

    sd = specref_sd(tiny_diffusers_dir)
    with pytest.raises(KeyboardInterrupt):
        specref.run_batch(sd, jobs, out, progress=False, runtime=rt, on_done=crash_after_two)
    first, second = seen
    assert first.startswith("job-") and second.startswith("job-") and first != second  # named by content
    assert sorted(p.name for p in out.iterdir()) == sorted([first, second, "results.csv", "run.json"])  # no temp
    # results.csv is current with what finished when the batch was stopped
    assert [(r["run"], r["status"]) for r in read_csv(out / "results.csv")] == [
        (first, "done"), (second, "done"), ("third", "pending")]
    stamp = (out / first / "run.json").stat().st_mtime_ns
    again = []
    res = specref.run_batch(sd, jobs, out, progress=False, runtime=rt, on_done=lambda r: again.append(r.name))
    assert again == ["third"] and [r.status for r in res.runs] == ["resumed", "resumed", "done"]
    assert (out / first / "run.json").stat().st_mtime_ns == stamp
    rows = read_csv(out / "results.csv")
    assert [r["run"] for r in rows] == [first, second, "third"]
    assert all(r["region"] == "blend+8px" and r["region_area"] for r in rows) and {p.name for p in out.iterdir()} == {
        first, second, "third", "results.csv", "run.json"}
    # a job inserted at the top and one changed: exactly those run; results.csv lists exactly the file's jobs
    write_jobs(jobs, [{**GOOD, "thres": 0.3}, GOOD, {**GOOD, "self_replace_steps": 0.7},
                      {**GOOD, "sr-steps": "2-3", "name": "third"}])
    again.clear()
    res = specref.run_batch(sd, jobs, out, progress=False, runtime=rt, on_done=lambda r: again.append(r.name))
    assert [r.status for r in res.runs] == ["done", "resumed", "resumed", "done"]
    assert [r.name for r in res.runs][1:3] == [first, second] and again == [res.runs[0].name, "third"]
    assert json.loads((out / "third" / "run.json").read_text())["settings"]["sr_steps"] == [2, 3]
    assert [r["run"] for r in read_csv(out / "results.csv")] == [r.name for r in res.runs]


def test_batch_bad_lines_fail_alone(tiny_diffusers_dir, inputs, tmp_path, capsys):
    jobs = write_jobs(inputs / "bad.jsonl", [
        {**GOOD, "source_mask": "sm.png"},
        {**GOOD, "source": "missing.png"},
        {**GOOD, "colour": "red"},
        {**GOOD, "target_words": "lion"},
        "{not json",
    ])
    out = tmp_path / "bad"
    code = main(["batch", str(jobs), "--model", str(tiny_diffusers_dir), "--out", str(out), "--quiet"])
    assert code == 4
    rows = read_csv(out / "results.csv")
    assert [r["status"] for r in rows] == ["done", "failed", "failed", "failed", "failed"]
    assert "source file" in rows[1]["error"] and "does not exist" in rows[1]["error"]
    assert "unknown setting 'colour'" in rows[2]["error"]
    assert "word 'lion' is not in the prompt" in rows[3]["error"]
    assert "JSONDecodeError" in rows[4]["error"]
    job = rows[0]["run"]
    assert sorted(p.name for p in out.iterdir()) == sorted([job, "results.csv", "run.json"])
    # metrics: an independent computation on the saved images, outside the user's source mask
    run = json.loads((out / job / "run.json").read_text())
    assert run["metrics"]["region"] == "source-mask"
    check_metrics(inputs / "s.png", out / job)
    assert "4 failed" in capsys.readouterr().out


def check_metrics(source: Path, folder: Path):
    """run.json's PSNR/SSIM/area equal numpy's PSNR and scikit-image's SSIM over the pixels outside region.png."""
    skm = pytest.importorskip("skimage.metrics")
    m = json.loads((folder / "run.json").read_text())["metrics"]
    a, b = np.asarray(Image.open(source).convert("RGB")), np.asarray(Image.open(folder / "edit.png").convert("RGB"))
    region = np.asarray(Image.open(folder / "region.png")) > 127
    mse = ((a.astype(float) - b.astype(float)) ** 2)[~region].mean()
    assert m["psnr_outside"] == pytest.approx(10 * np.log10(255**2 / mse), abs=1e-9)
    _, full = skm.structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                        full=True, channel_axis=2, data_range=255)
    assert m["ssim_outside"] == pytest.approx(full.mean(2)[~region].mean(), abs=1e-9)
    assert m["region_area"] == pytest.approx(region.mean())


def test_edit_metrics_blend_region(tiny_diffusers_dir, inputs, tmp_path):
    """`edit` measures outside the final Local Blend region; the random tiny model's region is the whole image."""
    out = tmp_path / "e"
    assert main(["edit", *edit_flags(inputs, tiny_diffusers_dir), "--out", str(out)]) == 0
    m = json.loads((out / "run.json").read_text())["metrics"]
    assert m["region"] == "blend+8px" and m["peak_memory_bytes"] > 0 and m["seconds"] > 0
    assert m["region_area"] == 1.0 and m["psnr_outside"] is None and m["ssim_outside"] is None
    assert (np.asarray(Image.open(out / "region.png")) == 255).all()


def test_metrics_outside_a_blend_region(inputs, tmp_path):
    """The Local Blend region: upsampled from the latent, dilated by the margin, resized to the output size."""
    import torch

    from specref.app.metrics import background_metrics, edit_region

    blend = torch.zeros(12, 16)
    blend[4:8, 6:10] = 1
    region, kind = edit_region((128, 96), (128, 96), blend, None, margin=8)
    assert kind == "blend+8px" and region.shape == (96, 128)
    expect = np.zeros((96, 128), bool)
    expect[24:72, 40:88] = True  # rows 32-64, cols 48-80 grown by 8 px
    assert np.array_equal(region, expect)
    src = Image.open(inputs / "s.png")
    edited = np.asarray(src).copy()
    edited[region] = 0
    edited[5:9, 5:9] += 7  # a small change outside
    folder = tmp_path / "m"
    folder.mkdir()
    Image.fromarray(edited).save(folder / "edit.png")
    Image.fromarray(region.astype(np.uint8) * 255).save(folder / "region.png")
    m = background_metrics(src, Image.fromarray(edited), region)
    (folder / "run.json").write_text(json.dumps({"metrics": m}))
    check_metrics(inputs / "s.png", folder)
    # SSIM windows next to the region see a few of its (zeroed) pixels: a little below 1
    assert m["region_area"] == pytest.approx(0.1875) and 40 < m["psnr_outside"] < 80 and 0.9 < m["ssim_outside"] < 1


def test_ssim_hand_computed():
    """Flat images: SSIM = (2ab + C1) / (a² + b² + C1) everywhere (no variance); equal images: 1."""
    from specref.app.metrics import gaussian_window, ssim_map

    a, b, c1 = 100.0, 120.0, (0.01 * 255) ** 2
    s = ssim_map(np.full((20, 30, 3), a), np.full((20, 30, 3), b))
    assert s.shape == (20, 30) and torch_allclose(s, (2 * a * b + c1) / (a * a + b * b + c1))
    x = np.random.default_rng(0).integers(0, 255, (17, 23, 3))
    assert torch_allclose(ssim_map(x, x), 1.0)
    g = gaussian_window()
    assert len(g) == 11 and abs(float(g.sum()) - 1) < 1e-12


def torch_allclose(t, v) -> bool:
    return bool((t - v).abs().max() < 1e-12)


def test_torchrun_two_ranks_equal_one_process(tiny_diffusers_dir, inputs, tmp_path):
    jobs = write_jobs(inputs / "dist.jsonl", [GOOD, {**GOOD, "self_replace_steps": 0.7}, {**GOOD, "sr_steps": "1-3"}])
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}  # one thread each: the same float sums
    args = ["-m", "specref", "batch", str(jobs), "--model", str(tiny_diffusers_dir), "--quiet", "--out"]
    one = subprocess.run([sys.executable, *args, str(tmp_path / "one")], env=env, capture_output=True, text=True,
                         timeout=300)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          *args, str(tmp_path / "two")], env=env, capture_output=True, text=True, timeout=300)
    if two.returncode != 0 and "rendezvous" in two.stderr.lower() and not (tmp_path / "two").exists():
        pytest.skip(f"torchrun cannot start here: {two.stderr[-500:]}")
    assert two.returncode == 0, two.stderr[-3000:]
    r1, r2 = read_csv(tmp_path / "one" / "results.csv"), read_csv(tmp_path / "two" / "results.csv")
    names = [r["run"] for r in r1]
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(names + ["results.csv", "run.json"])
    same = ("run", "status", "error", "psnr_outside", "ssim_outside", "region_area", "region")
    assert [{k: r[k] for k in same} for r in r1] == [{k: r[k] for k in same} for r in r2]
    for job in names:
        for name in ("edit.png", "reconstruction.png", "mask_t.png"):
            a, b = (np.asarray(Image.open(tmp_path / d / job / name)) for d in ("one", "two"))
            assert np.array_equal(a, b), (job, name)
