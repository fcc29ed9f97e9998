"""Seeing inside an edit: the Recorder changes nothing, the trace is true, compare_trace finds the
step where two edits part, the pictures are drawn; on the seeded tiny model."""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import sampling
import specref
import specref.app.cli
import specref.blend
import specref.srattn
from specref.app.pictures import mass_inside, write_inspection
from specref.trace import Recorder, load_trace, save_trace
from test_editor import CFG, N, REF, SRC, run
from tiny import write_inputs

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import compare_trace  # noqa: E402


def recorded(sd, cfg=CFG, sr=True):
    rec = Recorder(sampling.DDIM(cfg.steps), cfg.guidance, sr=sr, x0_steps=(0, cfg.steps - 1))
    return run(sd, cfg, observer=rec), rec


@pytest.fixture(scope="module")
def plain(tiny_sd):
    return run(tiny_sd)


@pytest.fixture(scope="module")
def inspected(tiny_sd):
    return recorded(tiny_sd)


def test_inspection_changes_nothing(plain, inspected):
    res, rec = inspected
    for k, v in plain.latents.items():
        assert torch.equal(v, res.latents[k]), k
    assert np.array_equal(np.asarray(plain.edit), np.asarray(res.edit))
    assert torch.equal(plain.mask_t, res.mask_t)
    assert rec.sr_maps() and len(rec.x0) == 2 and rec.maps is not None  # it did record


def test_trace_replays_step_by_step(inspected):
    """Each step recomputed from the recorded eps, the step's inputs and blend mask gives the next latents."""
    res, rec = inspected
    tr = rec.trace(res.latents["source_inverted"])
    lat, eps, blend, z = tr["edit_latents"], tr["eps"], tr["blend_mask"], tr["source_inverted"]
    assert lat.shape == (N + 1, 2, 4, 16, 16) and eps.shape == (N, 4, 4, 16, 16) and blend.shape == (N, 16, 16)
    assert torch.equal(lat[-1, 0:1], res.latents["reconstruction_latent"])
    assert torch.equal(lat[-1, 1:2], res.latents["edit_latent"])
    ddim = sampling.DDIM(N)
    start = specref.blend.blend_start(N, CFG.start_blend)
    assert torch.isnan(blend[:start]).all() and not torch.isnan(blend[start:]).any()
    for i, t in enumerate(ddim.timesteps.tolist()):
        x = torch.stack([z[N - i], lat[i, 1]])  # the reconstruction path's input is the inverted latent
        out = ddim.step(sampling.guide(eps[i], CFG.guidance, 2), t, x)
        if not torch.isnan(blend[i]).any():
            out = torch.stack([out[0], out[0] + blend[i][None] * (out[1] - out[0])])
        assert torch.allclose(out, lat[i + 1], rtol=0, atol=1e-6), i


def test_trace_mask_t_is_what_sr_attn_used(tiny_sd, monkeypatch):
    used = []
    inner = specref.srattn.blend_by_mask_t

    def spy(out_self, outs, masks_t):
        (mask_t,) = masks_t  # one reference group
        if mask_t is not None and mask_t.numel() == 16 * 16:  # the SR layers at the latent size (blocks 13-15)
            used.append(mask_t.clone())
        return inner(out_self, outs, masks_t)

    monkeypatch.setattr(specref.srattn, "blend_by_mask_t", spy)
    res, rec = recorded(tiny_sd, sr=False)
    mt = rec.trace(res.latents["source_inverted"])["mask_t"]
    s0, s1 = CFG.sr_steps
    assert torch.isnan(mt[:s0]).all() and len(used) == 3 * (s1 - s0)
    for k, i in enumerate(range(s0, s1)):
        for m in used[3 * k:3 * k + 3]:
            assert torch.equal(m.float(), mt[i].flatten()), i
    assert torch.equal(mt[-1].bool(), res.mask_t)


def test_compare_trace_names_the_step_where_edits_part(tiny_sd, inspected, tmp_path, capsys):
    res, rec = inspected
    a = save_trace(tmp_path / "a.safetensors", rec.trace(res.latents["source_inverted"]), {"settings": {}})
    assert compare_trace.main([str(a), str(a)]) == 0
    assert "agree at every step" in capsys.readouterr().out
    later = dataclasses.replace(CFG, sr_steps=(CFG.sr_steps[0] + 1, N))  # one SR step fewer: parts at step 1
    res2, rec2 = recorded(tiny_sd, later, sr=False)
    b = save_trace(tmp_path / "b.safetensors", rec2.trace(res2.latents["source_inverted"]), {"settings": {}})
    tb, _ = load_trace(b)
    assert torch.equal(tb["edit_latents"][:CFG.sr_steps[0] + 1], load_trace(a)[0]["edit_latents"][:CFG.sr_steps[0] + 1])
    assert compare_trace.main([str(a), str(b)]) == 1
    assert f"first step where they part by more than 1e-06: {CFG.sr_steps[0]}" in capsys.readouterr().out
    rows, first = compare_trace.compare(load_trace(a)[0], tb, 1e-6)
    assert first == CFG.sr_steps[0] and rows[first]["mask_t"] == 0.0  # one has mask_t at that step, one not


def test_pictures_are_drawn_with_labels(tiny_sd, inspected, tmp_path):
    res, rec = inspected
    paths = write_inspection(tmp_path, tiny_sd, rec, CFG.source_prompt, CFG.target_prompt, SRC, REF)
    names = {p.name for p in paths}
    assert names == {"cross_attention_source.png", "cross_attention_target.png", "masks_over_steps.png",
                     "sr_attention.png", "trajectory.png"}
    for p in paths:
        im = np.asarray(Image.open(p).convert("L"))
        assert im.shape[0] >= 128 and im.shape[1] >= 256, p.name
        # a label strip: the 16 rows under the first tile row hold dark text pixels on white
        strip = im[20 + 128: 20 + 128 + 16]  # under the title (20 px) and the first row of 128 px tiles
        assert (strip < 100).sum() > 20, p.name
    # the source prompt "a cat sitting next to a mirror" has 7 words -> 9 tiles with start and end (2 rows of 8)
    w = np.asarray(Image.open(tmp_path / "cross_attention_source.png")).shape[1]
    assert w == 8 * (128 + 4) + 8


def test_mass_inside():
    region = np.zeros((8, 8), bool)
    region[:4] = True
    v = torch.zeros(4, 4)
    v[:2] = 1.0
    v[3, 3] = 2.0
    assert mass_inside(v, region) == pytest.approx(8 / 10)


def test_cli_inspect_and_trace(tiny_diffusers_dir, tmp_path):
    from test_cli import args_for

    d = write_inputs(tmp_path / "in")
    out, insp, trace = tmp_path / "o", tmp_path / "insp", tmp_path / "t.safetensors"
    assert specref.app.cli.main(args_for(d, tiny_diffusers_dir, out, "--save-tensors", "--inspect", str(insp),
                                     "--trace", str(trace))) == 0
    assert len(list(insp.glob("*.png"))) == 5
    tr, meta = load_trace(trace)
    saved = load_file_dict(out / "tensors.safetensors")
    assert torch.equal(tr["edit_latents"][-1, 1:2], saved["edit_latent"])
    assert torch.equal(tr["source_inverted"], saved["source_inverted"])
    assert meta["settings"]["thres"] == 0.2 and len(meta["timesteps"]) == 5


def load_file_dict(path):
    from safetensors.torch import load_file

    return load_file(path)


def test_inspect_and_an_observer_is_an_error_before_any_work(tiny_sd):
    with pytest.raises(ValueError, match="inspect=True or an observer, not both"):
        run(tiny_sd, observer=Recorder(sampling.DDIM(N), CFG.guidance), inspect=True)
