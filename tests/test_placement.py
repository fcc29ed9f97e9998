"""Device and dtype of every tensor the editor makes, checked on CPU so the CUDA float16 path has no
surprise there: with the model in bfloat16, every tensor is on the model's device and in the model's dtype, except
the deliberate float32 ones listed below with their reasons; nothing is created on the host by default where the
model's device is meant; the kept reference K/V and the masks have the dtypes the code intends.
"""
from __future__ import annotations

import sys
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

import specref
import specref.pipeline
import weights
from specref import EditConfig

ROOT = Path(__file__).resolve().parents[1]
OURS = tuple(str(ROOT / d) + "/" for d in ("model", "sampling", "specref", "weights"))
N = 3

# (file, function) where a floating tensor deliberately is float32 whatever the model dtype, and why.
_PLAN = "P2P plan tensors (word vectors, mappers, alphas, reweight factors) are float32, applied in float32"
_MASKS = "mask statistics (resizing, min-max normalisation, thresholds, Local Blend pooling) run in float32"
FLOAT32_SITES = {
    ("specref/images.py", "to_tensor"): "input images are read as float32 and cast when they enter the VAE",
    ("specref/images.py", "to_pil"): "outputs are rounded to 8 bits from float32",
    ("model/unet.py", "timestep_embedding"): "sinusoidal features of timesteps up to 999 need float32; cast after",
    ("sampling/loops.py", "encode"): "latents are float32 (§2.2 scaling, then inversion in float32)",
    ("sampling/loops.py", "decode"): "scaled latents are divided in float32, decoded images returned as float32",
    ("sampling/loops.py", "batch_eps"): "the UNet's eps is returned in float32 for the guidance and the DDIM update",
    ("sampling/loops.py", "guide"): "eps is combined for guidance in float32",
    ("sampling/loops.py", "invert"): "the inverted trajectory is kept in float32",
    ("sampling/ddim.py", "_move"): "the DDIM update runs in float32: bf16/fp16 rounding accumulates over 50 steps",
    ("sampling/ddim.py", "predict_x0"): "the DDIM update runs in float32 (its x0 part)",
    ("sampling/ddim.py", "__init__"): "the noise schedule is float32",
    ("sampling/ddim.py", "alpha_bar"): "the noise schedule is float32 (read as a Python float)",
    ("specref/inputs.py", "prepare"): "input images are float32 (to_tensor)",
    ("specref/pipeline.py", "invert"): "stage 1's latents are float32",
    ("specref/pipeline.py", "edit_stage"): "latents of the edit loop; mask_s as a 0/1 float map for resizing",
    ("specref/p2p.py", "p2p_plan"): _PLAN,
    ("specref/words.py", "word_vector"): _PLAN,
    ("specref/p2p.py", "cross_replace_alpha"): _PLAN,
    ("specref/p2p.py", "replace_mapper"): _PLAN,
    ("specref/p2p.py", "reweight_equalizer"): _PLAN,
    ("specref/p2p.py", "move"): _PLAN,
    ("specref/p2p.py", "needs_probs"): _PLAN,
    ("specref/p2p.py", "edit_cross"): "the P2P cross-attention edit runs in float32, as the reference does",
    ("specref/p2p.py", "edit_replace"): "the P2P cross-attention edit runs in float32, as the reference does",
    ("specref/p2p.py", "__call__"): "the P2P edit of the maps runs in float32",
    ("specref/p2p.py", "add"): "the stored word maps are float32",
    ("specref/masks.py", "_at_step"): _MASKS,
    ("specref/masks.py", "word_masks"): _MASKS,
    ("specref/srattn.py", "mask_s_layer"): _MASKS,
    ("specref/blend.py", "__call__"): "Local Blend acts on the float32 latents",
    ("specref/pipeline.py", "denoise"): "the latents of the loop are float32",
    ("specref/blend.py", "local_blend_mask"): _MASKS,
    ("specref/blend.py", "_prompt_masks"): _MASKS,
    ("specref/blend.py", "apply_blend"): "Local Blend acts on the float32 latents",
    ("specref/masks.py", "resize_map"): _MASKS,
    ("specref/masks.py", "mask_t_from_maps"): _MASKS,
    ("specref/masks.py", "mask_t_map"): _MASKS,
}
# (file, function) that build the P2P plan in float64 on the host: exact for the float64 mode; P2PPlan.to casts
# the plan to float32 (float64 in that mode) on the model's device before it meets a map.
FLOAT64_SITES = {("specref/p2p.py", "cross_replace_alpha"), ("specref/p2p.py", "replace_mapper"),
                 ("specref/p2p.py", "refine_mapper"), ("specref/p2p.py", "align_mapper"),
                 ("specref/p2p.py", "reweight_equalizer"), ("specref/p2p.py", "p2p_plan"),
                 ("specref/words.py", "word_vector")}
# (file, function) that create a tensor without naming a device, so on the host whatever the model's device, and why
# that is right.
HOST_SITES = {
    ("specref/images.py", "to_tensor"): "images are converted on the host, then moved with the batch",
    ("sampling/ddim.py", "__init__"): "the schedule is read as Python floats (alpha_bar), never combined with latents",
    ("model/tokenizer.py", "__call__"): "token ids are moved by encode_prompts",
    ("specref/words.py", "word_vector"): "P2P plan tensors are built on the host and moved by P2PPlan.to",
    ("specref/p2p.py", "replace_mapper"): "P2P plan tensor, moved by P2PPlan.to",
    ("specref/p2p.py", "refine_mapper"): "P2P plan tensor, moved by P2PPlan.to",
    ("specref/p2p.py", "reweight_equalizer"): "P2P plan tensor, moved by P2PPlan.to",
    ("specref/p2p.py", "cross_replace_alpha"): "P2P plan tensor, moved by P2PPlan.to",
}

# Host tensors that are moved (or read as Python numbers) before they meet the model's tensors: checked on CUDA only.
HOST_OK = set(HOST_SITES) | {("specref/images.py", "to_pil"), ("specref/inputs.py", "prepare"),
                             ("specref/pipeline.py", "edit_stage"), ("specref/p2p.py", "p2p_plan"),
                             ("sampling/ddim.py", "alpha_bar")}


def _site() -> tuple[str, str] | None:
    """The innermost frame of this project's library code: (path from the repo root, function)."""
    f = sys._getframe(2)
    while f is not None:
        name = f.f_code.co_filename
        if name.startswith(OURS) and not f.f_code.co_name.startswith("<"):  # comprehensions, lambdas: their function
            return str(Path(name).relative_to(ROOT)), f.f_code.co_name
        f = f.f_back
    return None


class Recorder(TorchFunctionMode):
    """Every tensor a torch call returns (device, dtype, our call site); creations without a device argument."""

    def __init__(self):
        super().__init__()
        self.outputs: dict[tuple, set] = defaultdict(set)  # (device, dtype) -> sites
        self.host: set = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        site = _site()
        if site is None:
            return out
        inputs = [a for a in tree_flatten((args, kwargs))[0] if isinstance(a, torch.Tensor)]
        if not inputs and kwargs.get("device") is None and isinstance(out, torch.Tensor):
            self.host.add(site)
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self.outputs[(t.device, t.dtype)].add(site)
        return out


CFG = EditConfig(source_prompt="a cat sitting next to a mirror", target_prompt="a tiger sitting next to a mirror",
                 mode="replace", self_replace_steps=0.5, blend_words=(("cat",), ("tiger",)), target_words=("tiger",),
                 thres=0.3, sr_steps=(1, N), sr_layers=(10, 16), steps=N, size=64, start_blend=0.2,
                 reweight=(("tiger", 2.0),))


def _devices() -> list:
    return ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                                 reason="no CUDA device"))]


@pytest.fixture(scope="module", params=_devices())
def recorded(request, tiny_diffusers_dir):
    """A short SR-attn edit with the tiny model in bfloat16 (float16 on CUDA), recorded; the kept K/V and masks."""
    dtype = torch.float16 if request.param == "cuda" else torch.bfloat16
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # bf16 on a CPU without native bf16: slow, but the tiny model is small
        sd = weights.load_model(str(tiny_diffusers_dir), dtype=dtype, device=request.param)
    rng = np.random.default_rng(0)
    src = Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    ref = Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    mask = np.zeros((64, 64), np.uint8)
    mask[16:48, 16:48] = 255
    made = defaultdict(list)
    for name in ("ReferenceFeatures", "EditController"):  # keep the instances the editor makes
        cls = getattr(specref.pipeline, name)
        sub = type(name, (cls,), {"__init__": lambda self, *a, _c=cls, _n=name, **k: (_c.__init__(self, *a, **k),
                                                                                      made[_n].append(self))[0]})
        setattr(specref.pipeline, name, sub)
    try:
        with Recorder() as rec:
            res = specref.edit(sd, src, ref, CFG, reference_mask_file=Image.fromarray(mask), progress=False)
    finally:
        for name in ("ReferenceFeatures", "EditController"):
            setattr(specref.pipeline, name, getattr(specref.pipeline, name).__mro__[1])
    return sd, rec, res, made["ReferenceFeatures"][0], made["EditController"][0]


def test_every_tensor_is_on_the_models_device(recorded):
    sd, rec, *_ = recorded
    elsewhere = {s for (dev, _), sites in rec.outputs.items() if dev != sd.device for s in sites}
    # On CUDA the host-side tensors (HOST_SITES and what is computed from them before a move) stay on the CPU.
    assert sorted(elsewhere - (HOST_OK if sd.device.type != "cpu" else set())) == [], sorted(elsewhere)


def test_no_tensor_is_created_on_the_host_where_the_device_is_meant(recorded):
    _, rec, *_ = recorded
    assert rec.host, "the recorder saw no tensor creation at all"
    assert sorted(rec.host - HOST_SITES.keys()) == [], sorted(rec.host)


def test_floating_tensors_are_in_the_models_dtype_except_the_deliberate_float32(recorded):
    sd, rec, *_ = recorded
    other = defaultdict(set)
    for (_, dt), sites in rec.outputs.items():
        if dt.is_floating_point and dt != sd.dtype:
            other[dt] |= sites
    assert set(other) <= {torch.float32, torch.float64}, "\n".join(f"{k}: {sorted(v)}" for k, v in other.items())
    assert sorted(other[torch.float64] - FLOAT64_SITES) == [], sorted(other[torch.float64])
    extra = sorted(other[torch.float32] - FLOAT32_SITES.keys())
    assert extra == [], "\n".join(map(str, extra))


def test_kept_reference_kv_and_masks_have_the_intended_dtypes(recorded):
    sd, _, res, features, ctrl = recorded
    kept = {(k.dtype, v.dtype, k.device, v.device) for k, v in features.kv.values()}
    assert kept == {(sd.dtype, sd.dtype, sd.device, sd.device)}, kept  # feature_dtype None: the model's dtype
    assert ctrl.sr._mask_s_layer and all(m.dtype == torch.bool for m in ctrl.sr._mask_s_layer.values())
    layers = ctrl.sr.mask_t._layers
    assert layers and all(m.dtype == torch.bool for ms in layers.values() for m in ms)  # per group
    assert ctrl.maps.sum.dtype == torch.float32 and res.mask_t.dtype == torch.bool and res.mask_s.dtype == bool
    assert all(v.dtype == torch.float32 for v in res.latents.values())
