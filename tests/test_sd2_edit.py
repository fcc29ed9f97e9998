"""The editor on SD 2.x (docs/spec.md §9): an edit with the tiny SD 2 v-prediction model runs end to end (CLI,
--inspect, --trace, sweep) with no new flags, and its reconstruction path is the inverted trajectory, as for SD 1."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch

import specref
import weights
from specref.app.cli import main
from test_editor import CFG, MASK, REF, SRC, RecordingUNet
from tiny import write_inputs


@pytest.fixture(scope="module")
def v_dir(tmp_path_factory):
    pytest.importorskip("diffusers")
    from tiny import make_tiny_sd2

    return make_tiny_sd2(tmp_path_factory.mktemp("sd2edit") / "v", "v")


def test_reconstruction_path_follows_the_inverted_trajectory(v_dir):
    sd = weights.load_model(v_dir)
    assert (sd.family, sd.prediction_type, sd.native_size) == ("sd2", "v_prediction", 128)
    rec = RecordingUNet(sd.unet)
    from PIL import Image

    cfg = CFG.replace(size=None)  # the model's native size
    r = specref.edit(dataclasses.replace(sd, unet=rec), SRC, REF, cfg, reference_mask_file=Image.fromarray(MASK),
                     progress=False)
    n, z = cfg.steps, r.latents["source_inverted"]
    assert z.shape == (n + 1, 4, 16, 16) and r.config.size == 128 and r.mask_t.shape == (16, 16)
    edit_calls = [x for _, x in rec.calls if x.shape[0] == 4]
    assert len(edit_calls) == n
    for i, x in enumerate(edit_calls):
        assert torch.equal(x[0], z[n - i]) and torch.equal(x[2], z[n - i])
    assert torch.isfinite(r.latents["edit_latent"]).all()


def test_cli_edit_inspect_trace_and_sweep(v_dir, tmp_path):
    d = write_inputs(tmp_path / "in")
    flags = ["--model", str(v_dir), "--source", str(d / "s.png"), "--reference", str(d / "r.png"), "--reference-mask",
             str(d / "m.png"), "--preset", "mirror-tiger", "--steps", "3", "--thres", "0.2", "--quiet"]
    out = tmp_path / "o"
    assert main(["edit", *flags, "--out", str(out), "--inspect", str(tmp_path / "i"), "--trace",
                 str(tmp_path / "t.safetensors")]) == 0
    run = json.loads((out / "run.json").read_text())
    assert (run["family"], run["prediction_type"], run["working_size"]) == ("sd2", "v_prediction", [128, 128])
    assert len(list((tmp_path / "i").glob("*.png"))) == 5 and (tmp_path / "t.safetensors").is_file()
    assert main(["sweep", *flags, "--out", str(tmp_path / "s"), "--vary", "self-replace-steps=0.3,0.6"]) == 0
    with open(tmp_path / "s" / "results.csv") as f:
        rows = f.read().splitlines()
    assert len(rows) == 3 and all(",done," in r for r in rows[1:])
