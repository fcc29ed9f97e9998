"""Checkpoint loading: single files against diffusers' own single-file loader, strictness, refusals, Hub cache."""
from __future__ import annotations

import json
import shutil
import sys
import types
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import weights
from weights import StrictLoadError, UnsupportedCheckpoint

X = torch.randn(2, 4, 16, 24, generator=torch.Generator().manual_seed(0))
CTX = torch.randn(2, 77, 64, generator=torch.Generator().manual_seed(1))
IMG = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(2)) * 2 - 1
IDS = torch.tensor([[49406, 320, 2368, 49407] + [49407] * 73])


def outputs(sd) -> list[torch.Tensor]:
    with torch.no_grad():
        z = sd.vae.encode(IMG)
        return [sd.unet(X, 5, CTX), z, sd.vae.decode(z), sd.text_encoder(IDS)]


def same(a: list[torch.Tensor], b: list[torch.Tensor], tol: float = 1e-5) -> bool:
    return all(((x - y).abs().max() <= tol * y.abs().max()).item() for x, y in zip(a, b))


@pytest.fixture(scope="module")
def ldm_state(tiny_diffusers_dir):
    from tiny import to_ldm_state

    return {k: v.contiguous() for k, v in to_ldm_state(tiny_diffusers_dir).items()}


@pytest.fixture(scope="module")
def ldm_file(ldm_state, tmp_path_factory):
    path = tmp_path_factory.mktemp("ldm") / "tiny.safetensors"
    save_file(ldm_state, path)
    return path


def test_single_file_matches_diffusers_single_file_loader(tiny_sd, tiny_diffusers_dir, ldm_file):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import create_diffusers_clip_model_from_ldm
    from transformers import CLIPTextModel

    ours = weights.load_model(ldm_file)
    d = str(tiny_diffusers_dir)
    u = UNet2DConditionModel.from_single_file(str(ldm_file), config=d, subfolder="unet", local_files_only=True)
    v = AutoencoderKL.from_single_file(str(ldm_file), config=d, subfolder="vae", local_files_only=True)
    t = create_diffusers_clip_model_from_ldm(CLIPTextModel, load_file(ldm_file), config=d, subfolder="text_encoder",
                                             local_files_only=True)
    with torch.no_grad():
        z = v.encode(IMG).latent_dist.mean
        theirs = [u(X, 5, CTX).sample, z, v.decode(z).sample, t(IDS).last_hidden_state]
    assert same(outputs(ours), theirs)
    assert same(outputs(ours), outputs(tiny_sd))
    assert ours.unet.config == tiny_sd.unet.config  # architecture inferred from shapes alone


def test_ckpt_with_lightning_objects_and_ema(tiny_sd, ldm_state, tiny_diffusers_dir, tmp_path, monkeypatch):
    from tiny import to_ldm_state

    # A pickled Lightning callback class and numpy scalars, as in sd-v1-4.ckpt, made without Lightning installed.
    mod = types.ModuleType("pytorch_lightning.callbacks.model_checkpoint")

    class ModelCheckpoint:
        pass

    ModelCheckpoint.__module__, ModelCheckpoint.__qualname__ = mod.__name__, "ModelCheckpoint"
    mod.ModelCheckpoint = ModelCheckpoint
    for name in ("pytorch_lightning", "pytorch_lightning.callbacks", mod.__name__):
        monkeypatch.setitem(sys.modules, name, mod if name == mod.__name__ else types.ModuleType(name))
    import numpy as np

    ema_state = to_ldm_state(tiny_diffusers_dir, ema=True)
    path = tmp_path / "tiny-ema.ckpt"
    torch.save({"state_dict": ema_state, "global_step": 470000, "epoch": 6,
                "callbacks": {ModelCheckpoint: {"best_model_score": np.float64(0.5), "dirpath": "x"}}}, path)
    monkeypatch.delitem(sys.modules, mod.__name__)  # the loader must not need Lightning
    sd = weights.load_model(path)
    assert sd.extra["ema"] and same(outputs(sd), outputs(tiny_sd))  # EMA copy = original weights
    raw = weights.load_model(path, use_ema=False)  # raw weights were shifted by +1 in the file
    assert not same(outputs(raw)[:1], outputs(tiny_sd)[:1], tol=1e-3)


def test_strict_extra_and_missing_keys(ldm_state, tmp_path):
    extra = dict(ldm_state, **{"model.diffusion_model.some_new_layer.weight": torch.zeros(3)})
    save_file(extra, tmp_path / "extra.safetensors")
    with pytest.raises(StrictLoadError, match="some_new_layer"):
        weights.load_model(tmp_path / "extra.safetensors")
    missing = {k: v for k, v in ldm_state.items() if "mid_block" not in k and "middle_block.1.proj_out" not in k}
    save_file(missing, tmp_path / "missing.safetensors")
    with pytest.raises(StrictLoadError, match="missing: mid_block.attentions.0.proj_out"):
        weights.load_model(tmp_path / "missing.safetensors")


def test_strict_folder(tiny_diffusers_dir, tmp_path):
    folder = tmp_path / "f"
    shutil.copytree(tiny_diffusers_dir, folder)
    p = folder / "unet" / "diffusion_pytorch_model.safetensors"
    state = load_file(p)
    state["conv_in.weight"] = state["conv_in.weight"][:, :, :1].contiguous()
    save_file(state, p)
    with pytest.raises(StrictLoadError, match=r"wrong shape: conv_in.weight"):
        weights.load_model(folder)


def test_bin_and_fp16_variant_folder(tiny_sd, tiny_diffusers_dir, tmp_path):
    folder = tmp_path / "bin"
    shutil.copytree(tiny_diffusers_dir, folder)
    parts = (("unet", "diffusion_pytorch_model", "diffusion_pytorch_model"),
             ("vae", "diffusion_pytorch_model", "diffusion_pytorch_model"), ("text_encoder", "model", "pytorch_model"))
    for part, st, bin_ in parts:
        state = load_file(folder / part / f"{st}.safetensors")
        (folder / part / f"{st}.safetensors").unlink()
        torch.save(state, folder / part / f"{bin_}.bin")
        save_file({k: v.half() for k, v in state.items()}, folder / part / f"{st}.fp16.safetensors")
    assert same(outputs(weights.load_model(folder)), outputs(tiny_sd))
    half = weights.load_model(folder, variant="fp16")
    assert same(outputs(half), outputs(tiny_sd), tol=2e-2) and half.dtype == torch.float32


@pytest.mark.parametrize("keys,match", [
    ({"conditioner.embedders.0.transformer.text_model.x": 1}, "SDXL"),
    # SD 2 files load now (tests/test_sd2.py); an OpenCLIP tensor alone is still no model
    ({"cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight": 1}, "no UNet weights"),
    ({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": 1}, "LoRA"),
    ({"something.else": 1}, "no UNet weights"),
])
def test_unsupported_single_files(tmp_path, keys, match):
    save_file({k: torch.zeros(v) for k, v in keys.items()}, tmp_path / "x.safetensors")
    with pytest.raises(UnsupportedCheckpoint, match=f"unsupported checkpoint: .*{match}"):
        weights.load_model(tmp_path / "x.safetensors")


def test_unsupported_random_files_and_folders(tmp_path, tiny_diffusers_dir):
    (tmp_path / "random.safetensors").write_bytes(b"\x00\x01garbage" * 100)
    (tmp_path / "random.ckpt").write_bytes(b"not a pickle at all" * 10)
    (tmp_path / "notes.txt").write_text("hello")
    for name in ("random.safetensors", "random.ckpt", "notes.txt"):
        with pytest.raises(UnsupportedCheckpoint, match="unsupported checkpoint"):
            weights.load_model(tmp_path / name)
    xl = tmp_path / "xl"
    shutil.copytree(tiny_diffusers_dir, xl)
    (xl / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionXLPipeline"}))
    with pytest.raises(UnsupportedCheckpoint, match="StableDiffusionXLPipeline"):
        weights.load_model(xl)
    sd2 = tmp_path / "sd2"
    shutil.copytree(tiny_diffusers_dir, sd2)
    cfg = json.loads((sd2 / "unet" / "config.json").read_text())
    (sd2 / "unet" / "config.json").write_text(json.dumps(dict(cfg, prediction_type="x",
                                                              addition_embed_type="text_time")))
    with pytest.raises(UnsupportedCheckpoint, match="addition_embed_type"):
        weights.load_model(sd2)
    with pytest.raises(FileNotFoundError, match="not a folder, a file, or a Hub repo id"):
        weights.load_model(str(tmp_path / "does-not-exist.ckpt"))


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, (f"touch {_Evil.marker}",))


def test_malicious_pickle_runs_nothing(tmp_path):
    _Evil.marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "payload": _Evil()}, path)
    with pytest.raises(UnsupportedCheckpoint, match="weights-only loading refuses"):
        weights.load_model(path)
    assert not _Evil.marker.exists()


def test_hub_repo_id_from_offline_cache(tiny_sd, tiny_diffusers_dir, tmp_path, monkeypatch):
    import huggingface_hub.constants as c

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--someone--tiny-sd"
    shutil.copytree(tiny_diffusers_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    sd = weights.load_model("someone/tiny-sd")
    assert Path(sd.source).name == commit and same(outputs(sd), outputs(tiny_sd))


def test_load_dtype_and_meta_free(tiny_diffusers_dir):
    sd = weights.load_model(tiny_diffusers_dir, dtype=torch.bfloat16)
    for m in (sd.unet, sd.vae, sd.text_encoder):
        assert all(p.dtype == torch.bfloat16 and p.device.type == "cpu" for p in m.parameters())
        assert not any(b.is_meta for b in m.buffers())


def test_save_folder_round_trip(tiny_sd, tmp_path):
    from weights.save import save_folder

    again = weights.load_model(save_folder(tiny_sd, tmp_path / "saved"))
    assert same(outputs(again), outputs(tiny_sd), tol=0)
