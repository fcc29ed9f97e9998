"""Shared fixtures: the seeded tiny SD v1 model as a diffusers folder and loaded by us."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
if str(Path(__file__).parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).parent))

# 2 threads (the machine's cores); SPECREF_TEST_THREADS=1 while another job holds a core: oversubscribed threads
# spin and run many times slower
torch.set_num_threads(int(os.environ.get("SPECREF_TEST_THREADS", "2")))


@pytest.fixture(scope="session")
def tiny_diffusers_dir(tmp_path_factory) -> Path:
    """A seeded random SD v1-topology model saved by diffusers/transformers (needs the test extras)."""
    pytest.importorskip("diffusers")
    pytest.importorskip("transformers")
    from tiny import make_tiny_diffusers

    return make_tiny_diffusers(tmp_path_factory.mktemp("tiny") / "tiny-sd")


@pytest.fixture(scope="session")
def tiny_sd(tiny_diffusers_dir):
    """Our StableDiffusion loaded from the tiny diffusers folder (float32, CPU)."""
    import weights

    return weights.load_model(str(tiny_diffusers_dir), dtype=torch.float32, device="cpu")
