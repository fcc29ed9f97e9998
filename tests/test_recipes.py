"""The recipes of docs/modify.md run on the demo model and change what they say and nothing else."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import weights

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts" / "recipes"))
from _common import run_example  # noqa: E402
from mutual_self_attention import MutualSelfAttention  # noqa: E402
from self_attention_readout import SelfAttentionReadout  # noqa: E402
from soft_mask_s import SoftMaskS  # noqa: E402

STEPS = 6


@pytest.fixture(scope="module")
def demo():
    return weights.load_model()


@pytest.fixture(scope="module")
def plain(demo):
    return run_example(STEPS, sd=demo)


def same(a, b) -> bool:
    return all(torch.equal(a.latents[k], b.latents[k]) for k in a.latents)


def test_soft_mask_s(demo, plain):
    # with no blur the soft mask is the editor's 0/1 mask_s: the same edit, bit for bit
    assert same(run_example(STEPS, hook=lambda c: SoftMaskS(c, 0), sd=demo), plain)
    soft = run_example(STEPS, hook=lambda c: SoftMaskS(c, 4), sd=demo)
    assert torch.equal(soft.latents["reconstruction_latent"], plain.latents["reconstruction_latent"])
    assert (soft.latents["edit_latent"] - plain.latents["edit_latent"]).abs().max() > 1e-3


def test_mutual_self_attention(demo):
    base = run_example(STEPS, use_reference=False, sd=demo)
    none = run_example(STEPS, hook=MutualSelfAttention(range(10, 16), range(0)), use_reference=False, sd=demo)
    assert same(none, base)  # no steps: nothing changes
    mutual = run_example(STEPS, hook=MutualSelfAttention(range(10, 16), range(1, STEPS)), use_reference=False, sd=demo)
    assert torch.equal(mutual.latents["reconstruction_latent"], base.latents["reconstruction_latent"])
    assert (mutual.latents["edit_latent"] - base.latents["edit_latent"]).abs().max() > 1e-3


def test_self_attention_readout(demo, plain):
    readout = SelfAttentionReadout(13)
    assert same(run_example(STEPS, hook=readout, sd=demo), plain)  # it only reads
    assert sorted(readout.maps) == list(range(STEPS)) and readout.hw == (16, 16)
    m = readout.maps[0]
    assert m.shape == (256, 256) and torch.allclose(m.sum(-1), torch.ones(256), atol=1e-5)  # rows are softmaxes
    dirs, proj = readout.components()
    assert torch.allclose(dirs @ dirs.T, torch.eye(3, dtype=dirs.dtype), atol=1e-8)  # orthonormal directions
    assert proj[0].shape == (256, 3)
    assert readout.picture(32).size[0] >= STEPS * 32
