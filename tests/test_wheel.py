"""Packaging: a wheel built from the repo carries the CLIP vocabulary and the demo model, and the
demo edit runs from it with no --model, from another directory, in a fresh virtual environment.

Offline: the new environment reuses the installed torch/numpy/... through a .pth file pointing at a folder of
links to this interpreter's site-packages, minus this project's own (editable) install.
"""
from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# What a wheel needs from the repo: setup.cfg's packages, package data and README (long_description).
SOURCES = ("setup.cfg", "pyproject.toml", "README.md", "model", "sampling", "specref", "weights", "assets")
SKIP = ("specref", "__editable__", "_distutils_hack", "distutils-precedence")  # our own install; .pth files below


def _run(cmd: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(PYTHONNOUSERSITE="1", PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{cmd} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel, built without network from a copy of the repo's sources (the build writes build/, egg-info)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(ROOT / name, src / name)
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp / "dist"),
          str(src)], tmp)
    (whl,) = (tmp / "dist").glob("specref-*.whl")
    return whl


def test_wheel_carries_vocabulary_and_demo_model(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = ["model/data/bpe_simple_vocab_16e6.txt.gz", "model/data/NOTICE",
                "specref/assets/toy-sd/model_index.json",
                "specref/assets/toy-sd/unet/diffusion_pytorch_model.safetensors",
                "specref/assets/toy-sd/vae/diffusion_pytorch_model.safetensors",
                "specref/assets/toy-sd/text_encoder/model.safetensors",
                "specref/assets/examples/toy-checker/source.png",
                "specref/assets/examples/toy-checker/reference_mask.png",
                "specref/app/demo.py", "weights/precision.py", "sampling/ddim.py"]
    assert [n for n in expected if n not in names] == []
    assert not any(n.startswith(("tests/", "scripts/", "assets/")) for n in names)  # assets only under specref/


def test_installed_wheel_runs_the_demo_from_another_directory(wheel, tmp_path):
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp_path)
    py = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    purelib = Path(_run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                        tmp_path).stdout.strip())
    # Links to the installed dependencies (torch, numpy, pip, ...), without this project's editable install.
    deps = tmp_path / "deps"
    deps.mkdir()
    for sp in site.getsitepackages():
        for entry in Path(sp).iterdir():
            if not entry.name.startswith(SKIP) and entry.suffix != ".pth" and not (deps / entry.name).exists():
                (deps / entry.name).symlink_to(entry)
    (purelib / "_specref_test_deps.pth").write_text(f"{deps}\n")
    _run([str(py), "-m", "pip", "install", "--no-index", "--no-deps", "--quiet", str(wheel)], tmp_path)

    work = tmp_path / "elsewhere"
    work.mkdir()
    where = _run([str(py), "-c", "import specref, weights; print(specref.__file__); print(weights.DEFAULT_MODEL)"],
                 work)
    spec_file, model_dir = (Path(line) for line in where.stdout.split())
    assert spec_file.is_relative_to(purelib) and model_dir == purelib / "specref" / "assets" / "toy-sd", where.stdout

    # 3 steps: the smallest count whose scaled SR steps (round(10 * 3/50) = 1) leave step 0 for mask_t's first map.
    _run([str(py), "-m", "specref", "demo", "--steps", "3", "--out", "demo-out", "--quiet"], work)
    out = work / "demo-out"
    assert {"edit.png", "summary.png", "mask_t.png", "run.json"} <= {p.name for p in out.iterdir()}
    run = json.loads((out / "run.json").read_text())
    assert Path(run["model"]) == model_dir and Path(run["inputs"]["source"]).is_relative_to(purelib)
