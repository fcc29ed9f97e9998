"""scripts/gpu_check.py: says so and exits 0 without CUDA; runs every check on a CUDA device."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.py"


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present: the full check runs instead")
def test_without_cuda_it_says_so_and_exits_0():
    r = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "no CUDA device: nothing to check", (r.stdout, r.stderr)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_path_end_to_end():
    sys.path.insert(0, str(SCRIPT.parent))
    import gpu_check

    assert gpu_check.main(["--steps", "10"]) == 0
