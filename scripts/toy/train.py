#!/usr/bin/env python
"""Train the demo model's next release: a small SD v1-architecture model on synthetic scenes. (The shipped
assets/toy-sd was made by an earlier recipe; its model card measures this one's candidate beside it.)

    python scripts/toy/train.py [--out assets/toy-sd --overwrite] [--work out/toy-train] [--threads 2] [--seed 0] \
        [--vae-steps N] [--unet-steps N] [--sr-steps N] [--pool N] [--word-weight W] [--map-blocks 13,14,15]

Same UNet/VAE/CLIP code and config format as SD v1 (4 UNet levels, 16 transformer blocks, 8x VAE, the real
CLIP tokenizer), small widths, 128² images (16² latents: every SD v1 attention level exists, down to 2² mid).
Scenes of one or two objects (scripts/toy/scenes.py), captioned.
Stage 1 trains the VAE (L1 + MSE, KL 1e-6 as in SD), stage 2 the UNet and text encoder together (epsilon
prediction on the SD v1 noise schedule with offset noise and Min-SNR weights, 10 % empty captions for
classifier-free guidance, EMA), with a word loss: each captioned word's cross-attention map at the model's word
level (MAP_BLOCKS, heads and layers averaged) is asked to put its mass on its own object (the background words:
on the background), which the scene code knows. Stage 3 fine-tunes both on pairs of scenes through SR-attn
(PairedSRAttention), half the targets with their pattern hidden, the word loss kept: what real SD learnt from
web-scale images, that self-attention can find an object's look in another image, this model is taught on
purpose; the editor itself is training-free and unchanged.

Stage files (--work DIR): vae.pt, t2i.pt and sr.pt hold each stage's result; a rerun with the same settings
loads the stages that are done, and a stage that was stopped resumes from DIR/<stage>.ckpt.pt (written every
--every steps). CPU-only and deterministic for a given seed and thread count (the same CPU kind and torch
version): a resumed run gives the same bytes as one that ran through.
The folder gets specref.json, the model's own edit settings: {"edit_defaults": {"map_blocks": [...]}}, the
level its words are read at.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]

from model import (AttentionHook, AttnSite, CLIPTextConfig, CLIPTextEncoder, CLIPTokenizer,  # noqa: E402
                   StableDiffusion, UNet, UNetConfig, VAE, VAEConfig, attention)
from sampling import DDIM  # noqa: E402
from specref.srattn import ReferenceKeys, sr_attention  # noqa: E402
from toy.scenes import (BACKGROUND, PERIOD, SIZE, TWO_OBJECTS, Scene, draw_objects, random_scene,  # noqa: E402
                        random_words)
from weights.save import save_folder  # noqa: E402

# Small widths in the SD v1 layout. The VAE has 1 resnet per level (SD: 2) to fit the CPU budget.
# Norm groups scale down with the widths (SD v1: 32 groups of >= 4 channels): with 1 channel per group, a
# group norm removes each channel's mean, and the decoder could not tell a red flat area from a blue one.
# Heads per level (a config field in SD v1 too, which has 8 everywhere): head width 16-32 here. With 8 heads
# of 4 channels the CPU's fused attention took half of a training step (measured: 1.65x faster steps).
HEADS = (2, 2, 3, 3)
VAE_CONFIG = VAEConfig(block_out_channels=(32, 64, 64, 64), layers_per_block=1, norm_num_groups=8)
UNET_CONFIG = UNetConfig(block_out_channels=(32, 64, 96, 96), cross_attention_dim=64, sample_size=SIZE // 8,
                         norm_num_groups=8, heads=HEADS)
TEXT_CONFIG = CLIPTextConfig(hidden_size=64, intermediate_size=256, num_hidden_layers=3, num_attention_heads=1)
MIN_SNR = 5.0
# At t = T the SD v1 schedule keeps sqrt(alpha_bar) = 0.068 of the image: a 16² latent's channel means (~1) then
# stand out of the noise's own means (std 1/16), and a model trained on plain noise reads the background colour
# from the starting noise instead of the prompt (measured: shifting the start's means turned "gray background"
# into black/white/blue ones). A random constant per channel in the training noise hides those means.
OFFSET_NOISE = 0.2
SCHEDULER = {"_class_name": "DDIMScheduler", "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
             "beta_schedule": "scaled_linear", "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1,
             "prediction_type": "epsilon"}
# The model's word level: the cross-attention blocks whose maps (one size) Local Blend and mask_t read. Up block
# 3's 16x16 maps at 128² (blocks 10-12 are 8x8; §4.3's 4, 5, 7, 8, 9 are 4x4 here, coarser than an object).
MAP_BLOCKS = (13, 14, 15)
WORD_WEIGHT = 0.1     # the word loss's weight beside the (Min-SNR weighted) denoising loss
# Stage 1 on this CPU (no native bf16) is conv-bound: 32² crops around the objects, 32 a batch, cost half as much a
# step as 64² random crops, 16 a batch, for the same loss and PSNR after 400 steps (measured).
VAE_LR, VAE_BATCH, VAE_CROP = 1e-3, 32, 32
VAE_STEPS, UNET_STEPS, SR_STEPS, POOL = 1000, 2000, 1200, 4000
CHECKPOINT_EVERY = 100  # steps between a stage's checkpoints


def autocast(enabled: bool) -> contextlib.AbstractContextManager:
    """bfloat16 autocast on the CPU, or nothing. Off by default: on a CPU without native bf16 (AVX2-only AMD EPYC,
    Zen 1) a VAE step took 6.4x longer in bf16 than in float32 (measured); with AVX-512 BF16 it was 1.6x faster."""
    return torch.autocast("cpu", torch.bfloat16) if enabled else contextlib.nullcontext()


def lr_at(step: int, total: int, peak: float, warmup: int = 50) -> float:
    """Linear warm-up, then cosine decay to 10 % of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup))))


def stack_images(images: list) -> torch.Tensor:
    """RGB PIL images -> uint8 [n, 3, H, W]."""
    return torch.from_numpy(np.stack([np.asarray(im).transpose(2, 0, 1) for im in images]))


@dataclass
class Pool:
    """The training scenes: images uint8 [n, 3, 128, 128] and each object's coverage of every latent pixel,
    [n, 2, 16, 16] (the second object's is 0 in one-object scenes)."""

    scenes: list[Scene]
    images: Tensor
    covers: Tensor


def coverage(masks: list, size: int = SIZE // 8) -> Tensor:
    """L masks (255 = object) -> [2, size, size], the fraction of each cell an object covers (zeros for a missing
    second object)."""
    m = torch.from_numpy(np.stack([np.asarray(x) for x in masks])).float().div(255)
    out = F.adaptive_avg_pool2d(m[:, None], size)[:, 0]
    return torch.cat([out, torch.zeros(2 - len(out), size, size)])


def make_pool(n: int, seed: int, two: float = TWO_OBJECTS) -> Pool:
    """n random scenes (a fraction `two` of them with two objects), drawn."""
    rng = np.random.default_rng(seed)
    scenes = [random_scene(rng, two) for _ in range(n)]
    drawn = [draw_objects(s) for s in scenes]
    return Pool(scenes, stack_images([im for im, _ in drawn]), torch.stack([coverage(m) for _, m in drawn]))


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 -> float in [-1, 1]."""
    return images.float() / 127.5 - 1


# ---- checkpoints: a stage that is stopped resumes where it was, with the same bytes --------------------------

class Batches:
    """Endless shuffled mini-batches of indices (a new permutation each epoch), with a state to checkpoint."""

    def __init__(self, n: int, batch_size: int, rng: np.random.Generator):
        self.n, self.batch_size, self.rng = n, batch_size, rng
        self.perm, self.pos = None, 0

    def __next__(self) -> np.ndarray:
        if self.perm is None or self.pos + self.batch_size > self.n:
            self.perm, self.pos = self.rng.permutation(self.n), 0
        self.pos += self.batch_size
        return self.perm[self.pos - self.batch_size:self.pos]

    def state(self) -> dict:
        return {"perm": None if self.perm is None else torch.from_numpy(self.perm), "pos": self.pos}

    def load(self, state: dict) -> None:
        self.perm = None if state["perm"] is None else state["perm"].numpy()
        self.pos = state["pos"]


class Checkpoint:
    """A stage's checkpoint file (`path`, or none): everything the stage's next step depends on, every `every`
    steps, written atomically; `settings` must match for a resume."""

    def __init__(self, path: Path | None, settings: dict, every: int = CHECKPOINT_EVERY,
                 log: Callable[[str], None] = print):
        self.path, self.settings, self.every, self.log = path, settings, every, log

    def load(self) -> dict | None:
        """The saved state, or None (no file, or none asked for)."""
        if self.path is None or not self.path.exists():
            return None
        state = torch.load(self.path, weights_only=False)
        if state["settings"] != self.settings:
            raise ValueError(f"{self.path} is a checkpoint of a run with {state['settings']}, not {self.settings}; "
                             "delete it or pass another --work folder")
        self.log(f"resuming from {self.path} at step {state['step']}")
        return state

    def save(self, step: int, total: int, state: Callable[[], dict]) -> None:
        """After step `step` (0-based) of `total`: write every `every` steps, not after the last one."""
        if self.path is None or (step + 1) % self.every or step + 1 == total:
            return
        tmp = self.path.with_name(self.path.name + ".tmp")
        torch.save({"settings": self.settings, "step": step + 1, **state()}, tmp)
        os.replace(tmp, self.path)

    def done(self) -> None:
        """The stage finished: its checkpoint is no longer needed."""
        if self.path is not None and self.path.exists():
            self.path.unlink()


def rng_state(rng: np.random.Generator, gen: torch.Generator) -> dict:
    return {"numpy": rng.bit_generator.state, "torch": gen.get_state()}


def load_rng_state(state: dict, rng: np.random.Generator, gen: torch.Generator) -> None:
    rng.bit_generator.state = state["numpy"]
    gen.set_state(state["torch"])


# ---- stage 1: the VAE ---------------------------------------------------------------------------------------

def vae_loss(vae: VAE, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """L1 + MSE reconstruction from a posterior sample, plus SD's tiny KL term (weight 1e-6)."""
    mean, logvar = vae.quant_conv(vae.encoder(x)).chunk(2, dim=1)
    logvar = logvar.clamp(-30, 20)
    z = mean + (0.5 * logvar).exp() * torch.randn(mean.shape, generator=gen, dtype=mean.dtype)
    y = vae.decode(z).float()
    kl = 0.5 * (mean.float() ** 2 + logvar.float().exp() - 1 - logvar.float()).sum(dim=(1, 2, 3)).mean()
    return (y - x).abs().mean() + ((y - x) ** 2).mean() + 1e-6 * kl


def object_crops(objects: list[list[tuple[float, float, float]]], idx: np.ndarray, crop: int,
                 rng: np.random.Generator) -> list[tuple[int, int]]:
    """(oy, ox) per image: a crop centred on a random point of one of its objects or just around it (within 1.2
    radii of its centre: its colour and its edge), on the 8 px latent grid. objects: (cx, cy, r) per object."""
    out = []
    for i in idx:
        cx, cy, r = objects[i][int(rng.integers(len(objects[i])))]
        angle, reach = rng.uniform(0, 2 * math.pi), rng.uniform(0, 1.2) * r
        centre = np.array([cy + reach * math.sin(angle), cx + reach * math.cos(angle)]) * SIZE
        oy, ox = (centre - crop / 2).clip(0, SIZE - crop)
        out.append((int(oy) // 8 * 8, int(ox) // 8 * 8))
    return out


def train_vae(vae: VAE, images: torch.Tensor, steps: int, seed: int, batch_size: int = VAE_BATCH,
              crop: int = VAE_CROP, lr: float = VAE_LR, amp: bool = False, objects: list | None = None,
              ckpt: Checkpoint | None = None, log: Callable[[str], None] = print) -> list[float]:
    """Stage 1: the VAE on crops (the last 10 % of steps on whole images, as many pixels per step); returns the
    losses. objects: each image's objects as (cx, cy, r) (units of SIZE): every crop is then on or around one of
    them (their colours and edges are what is hard to keep; a plain background is easy), else one random place
    per batch."""
    rng, gen = np.random.default_rng(seed), torch.Generator().manual_seed(seed)
    with torch.no_grad():  # start the posterior narrow (std ~0.02): unit noise would drown the untrained mean
        vae.quant_conv.bias[vae.config.latent_channels:] = -8.0
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    losses, t0, start = [], time.time(), 0
    ckpt = ckpt or Checkpoint(None, {})
    if (saved := ckpt.load()) is not None:
        vae.load_state_dict(saved["vae"])
        opt.load_state_dict(saved["opt"])
        load_rng_state(saved["rng"], rng, gen)
        losses, start = saved["losses"], saved["step"]
    for step in range(start, steps):
        whole = step >= int(0.9 * steps)
        idx = rng.integers(0, len(images), max(2, batch_size * crop**2 // SIZE**2) if whole else batch_size)
        x = to_unit(images[idx])
        if not whole and objects is not None:
            x = torch.stack([xi[:, oy:oy + crop, ox:ox + crop]
                             for xi, (oy, ox) in zip(x, object_crops(objects, idx, crop, rng))])
        elif not whole:  # crops: a 4x cheaper step that still sees every part of a scene
            oy, ox = rng.integers(0, SIZE - crop + 1, 2) // 8 * 8
            x = x[:, :, oy:oy + crop, ox:ox + crop]
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, lr)
        with autocast(amp):
            loss = vae_loss(vae, x, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if (step + 1) % 50 == 0 or step == steps - 1:
            log(f"vae  step {step + 1}/{steps}  loss {np.mean(losses[-50:]):.4f}  {time.time() - t0:.0f}s")
        ckpt.save(step, steps, lambda: {"vae": vae.state_dict(), "opt": opt.state_dict(),
                                        "rng": rng_state(rng, gen), "losses": losses})
    return losses


@torch.no_grad()
def encode_pool(vae: VAE, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Posterior means of every image, [n, 4, 16, 16] (unscaled)."""
    return torch.cat([vae.encode(to_unit(images[i:i + batch_size])) for i in range(0, len(images), batch_size)])


# ---- the word loss: each captioned word's map on its own object -----------------------------------------------

Words = list[tuple[str, "int | None"]]  # a caption's words and their roles (scenes.Scene.caption_words)


@functools.lru_cache(maxsize=65536)
def _token_roles(tokenizer: CLIPTokenizer, words: tuple[tuple[str, int | None], ...]) -> tuple[tuple[int, ...], tuple]:
    """(token ids [77], role per token position): the role of the word each token belongs to, None elsewhere."""
    caption = " ".join(w for w, _ in words)
    enc = tokenizer.encode(caption)
    starts = np.cumsum([0] + [len(w) + 1 for w, _ in words])
    roles: list[int | None] = [None] * len(enc.ids)
    for k, (s, e) in enumerate(enc.spans):  # spans[k] belongs to ids[k + 1]
        i = int(np.searchsorted(starts, s, side="right")) - 1
        roles[k + 1] = words[i][1]
    return tuple(enc.ids), tuple(roles)


def word_targets(roles: list[tuple], covers: Tensor) -> tuple[Tensor, Tensor]:
    """(where each token's map should be [B, 77, h*w], which tokens have a role [B, 77]) from each caption's token
    roles (_token_roles) and the objects' coverage at the map size, covers [B, 2, h, w]; a background word's place
    is what no object covers."""
    targets, has = torch.zeros(len(roles), 77, covers[0, 0].numel()), torch.zeros(len(roles), 77)
    for b, rs in enumerate(roles):
        places = {0: covers[b, 0].flatten(), 1: covers[b, 1].flatten(),
                  BACKGROUND: (1 - covers[b].sum(0)).clamp(0, 1).flatten()}
        for k, role in enumerate(rs):
            if role is not None:
                targets[b, k], has[b, k] = places[role], 1.0
    return targets, has


class WordMaps(AttentionHook):
    """Keeps the cross-attention probabilities of the layers it is set on, heads averaged ([B, h*w, 77] each), with
    their graph, for the word loss."""

    def __init__(self) -> None:
        self.maps: list[Tensor] = []
        self.hw = (0, 0)

    def needs_probs(self, site: AttnSite, step: int | None) -> bool:
        return site.kind == "cross"

    def edit_probs(self, site: AttnSite, step: int | None, probs: Tensor) -> Tensor:
        self.maps.append(probs.mean(1))
        self.hw = (site.height, site.width)
        return probs


def word_loss(maps: list[Tensor], targets: Tensor, has: Tensor, kind: str = "kl") -> Tensor:
    """The word loss, averaged over the captioned words; a word's map is its column of the maps (layers averaged),
    normalised over the pixels, as mask_t and Local Blend normalise it.
    kind "kl": KL(place || map), with the place (the word's object, or the background) normalised: 0 when the
    map is spread evenly over its place; mask_t and Local Blend threshold the min-max normalised map (0.5, 0.3),
    and mask_t resizes it to the 8x8 layers too, so a map that piles up on a few of the object's cells selects
    only those, or none. kind "share": 1 - the map's share on its place (no matter how it spreads there)."""
    a = torch.stack(maps).mean(0).transpose(1, 2).float()  # [B, 77, h*w]
    a = a / a.sum(-1, keepdim=True).clamp_min(1e-12)
    share = 1 - (a * targets).sum(-1)
    p = targets / targets.sum(-1, keepdim=True).clamp_min(1e-12)
    kl = (p * (p.clamp_min(1e-12).log() - a.clamp_min(1e-12).log())).sum(-1)
    per_word = {"share": share, "kl": kl, "kl+share": kl + share}[kind]
    return (per_word * has).sum() / has.sum().clamp_min(1)


# ---- stages 2 and 3: denoising ----------------------------------------------------------------------------------

@dataclass
class Batch:
    """One training batch: clean latents, caption words, object coverage [B, 2, 16, 16] (for the word loss), the
    self-attention hook to train with (None: the plain model), per-pixel loss weights at the latent size
    ([B, 1, 16, 16], or None: uniform) and latents to noise in place of the clean ones at t >= HIDE_FROM_T (None:
    the clean ones; see train_reference_attention's hide_pattern)."""

    x0: Tensor
    words: list[Words]
    covers: Tensor
    hook: "PairedSRAttention | None" = None
    pixel_weight: Tensor | None = None
    shown: Tensor | None = None


HIDE_FROM_T = 200
HIDE_PATTERN = 0.5  # the shipped recipe's fraction (train_reference_attention's hide_pattern)


@dataclass(frozen=True)
class Recipe:
    """What stages 2 and 3 share: the word loss (its weight, and the blocks whose maps it reads), EMA, Min-SNR."""

    word_weight: float = WORD_WEIGHT
    map_blocks: tuple[int, ...] = MAP_BLOCKS
    word_loss: str = "kl+share"  # measured: "kl" alone piles a word's map on a few cells (mask_t IoU 0.03 vs 0.49)
    ema_decay: float = 0.999
    min_snr: float | None = MIN_SNR
    offset_noise: float = OFFSET_NOISE


def diffusion_training(unet: UNet, text: CLIPTextEncoder, tokenizer: CLIPTokenizer, next_batch: Callable[[], Batch],
                       steps: int, rng: np.random.Generator, gen: torch.Generator, lr: float, warmup: int,
                       recipe: Recipe, name: str, ckpt: Checkpoint | None = None, extra_state: object = None,
                       log: Callable[[str], None] = print) -> tuple[dict[str, list[float]], dict]:
    """UNet + text encoder, epsilon prediction on the SD v1 schedule, plus the word loss; returns the losses
    ({"loss": total, "word": word loss}) and the EMA weights.

    Min-SNR-gamma loss weights (Hang et al. 2023), min(SNR, gamma) / SNR for epsilon prediction: less weight on
    the nearly clean steps, where the loss is easy and the text matters least. Offset noise: std of a per-image,
    per-channel constant added to the noise (see OFFSET_NOISE). `rng`, `gen` and `extra_state` (with state()/load())
    are what next_batch draws from: checkpointed with the weights.
    """
    alpha_bar = DDIM(1, SCHEDULER).alphas_cumprod  # the schedule train() saves with the model
    snr = alpha_bar / (1 - alpha_bar)
    weight = snr.clamp(max=recipe.min_snr) / snr if recipe.min_snr else torch.ones_like(snr)
    params = list(unet.parameters()) + list(text.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    modules = {"unet": unet, "text_encoder": text}
    ema = {k: copy.deepcopy(m).requires_grad_(False) for k, m in modules.items()}
    losses: dict[str, list[float]] = {"loss": [], "word": []}
    t0, start = time.time(), 0
    ckpt = ckpt or Checkpoint(None, {})
    if (saved := ckpt.load()) is not None:
        for k, m in modules.items():
            m.load_state_dict(saved[k])
            ema[k].load_state_dict(saved["ema_" + k])
        opt.load_state_dict(saved["opt"])
        load_rng_state(saved["rng"], rng, gen)
        if extra_state is not None:
            extra_state.load(saved["extra"])
        losses, start = saved["losses"], saved["step"]
    for step in range(start, steps):
        batch = next_batch()
        ids, roles = zip(*(_token_roles(tokenizer, tuple(ws)) for ws in batch.words))
        t = torch.randint(0, len(alpha_bar), (len(batch.x0),), generator=gen)
        if batch.hook is not None:
            t = batch.hook.share_timesteps(t)
        x0 = batch.x0
        noise = torch.randn(x0.shape, generator=gen)
        noise = noise + recipe.offset_noise * torch.randn((*x0.shape[:2], 1, 1), generator=gen)
        a = alpha_bar[t].view(-1, 1, 1, 1)
        shown = x0 if batch.shown is None else torch.where((t >= HIDE_FROM_T).view(-1, 1, 1, 1), batch.shown, x0)
        xt = a.sqrt() * shown + (1 - a).sqrt() * noise
        label = noise + (a / (1 - a)).sqrt() * (shown - x0)  # (xt - sqrt(a) x0) / sqrt(1 - a): x0's noise
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, lr, warmup=warmup)
        maps = WordMaps()
        if batch.hook is not None:
            unet.set_attn_hook(batch.hook, SR_BLOCKS, ("self",))
        if recipe.word_weight:
            unet.set_attn_hook(maps, recipe.map_blocks, ("cross",))
        try:
            err = (unet(xt, t, text(torch.tensor(ids))).float() - label) ** 2
        finally:
            unet.set_attn_hook(None)
        err = (err if batch.pixel_weight is None else err * batch.pixel_weight).mean(dim=(1, 2, 3))
        loss = (err * weight[t]).mean()
        words = torch.zeros(())
        if recipe.word_weight:
            words = word_loss(maps.maps, *word_targets(roles, F.adaptive_avg_pool2d(batch.covers, maps.hw)),
                              recipe.word_loss)
        total = loss + recipe.word_weight * words
        opt.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(recipe.ema_decay, (1 + step) / (10 + step))  # short warm-up of the average
        with torch.no_grad():
            for k, m in modules.items():
                for pe, p in zip(ema[k].parameters(), m.parameters()):
                    pe.lerp_(p, 1 - decay)
        losses["loss"].append(float(loss.detach()))
        losses["word"].append(float(words.detach()))
        if (step + 1) % 50 == 0 or step == steps - 1:
            log(f"{name} step {step + 1}/{steps}  loss {np.mean(losses['loss'][-50:]):.4f}  "
                f"word {np.mean(losses['word'][-50:]):.3f}  {time.time() - t0:.0f}s")
        ckpt.save(step, steps, lambda: {
            **{k: m.state_dict() for k, m in modules.items()}, **{"ema_" + k: m.state_dict() for k, m in ema.items()},
            "opt": opt.state_dict(), "rng": rng_state(rng, gen), "losses": losses,
            "extra": None if extra_state is None else extra_state.state()})
    return losses, ema


def train_unet(unet: UNet, text: CLIPTextEncoder, tokenizer: CLIPTokenizer, latents: torch.Tensor, pool: Pool,
               steps: int, seed: int, recipe: Recipe = Recipe(), batch_size: int = 32, lr: float = 5e-4,
               ckpt: Checkpoint | None = None, log: Callable[[str], None] = print) -> tuple[dict, dict]:
    """Stage 2: text-to-image, 10 % empty captions, with the word loss; returns the losses and the EMA weights."""
    rng, gen = np.random.default_rng(seed + 1), torch.Generator().manual_seed(seed + 1)
    order = Batches(len(latents), batch_size, rng)

    def next_batch() -> Batch:
        idx = next(order)
        return Batch(latents[idx], [random_words(pool.scenes[i], rng) for i in idx], pool.covers[idx])

    return diffusion_training(unet, text, tokenizer, next_batch, steps, rng, gen, lr, 100, recipe, "unet", ckpt,
                              order, log)


# Stage 3 trains SR-attn's blocks (§4.4's default SR layers, up blocks 2-3).
SR_BLOCKS = range(10, 16)
# Stage 3's loss weight on a target's object pixels (1 elsewhere): the texture is a small part of the whole
# image's error, and with uniform weights 300 steps learnt to copy the reference's colour but not its texture.
OBJECT_WEIGHT = 5.0


class PairedSRAttention(AttentionHook):
    """Stage 3's self-attention in SR_BLOCKS: a batch is [references..., targets...]; each target attends to its
    reference's object keys inside its own object, exactly as SR-attn does in an edit (specref.srattn), with the
    drawn object masks as mask_s (reference) and mask_t (target). References attend to themselves."""

    def __init__(self, mask_ref: Tensor, mask_tgt: Tensor):
        self.mask_ref, self.mask_tgt = mask_ref, mask_tgt  # [n, 16, 16] object coverage at the latent size

    @staticmethod
    def at(mask: Tensor, hw: tuple[int, int]) -> Tensor:
        """Coverage [n, 16, 16] -> [n, H*W] bool at a layer's size: pixels at least half covered (any, if none is)."""
        m = F.adaptive_avg_pool2d(mask[:, None], hw).flatten(1)
        return torch.where((m >= 0.5).any(dim=1, keepdim=True), m >= 0.5, m > 0)

    def share_timesteps(self, t: Tensor) -> Tensor:
        """A target is noised to its reference's step, as the edit reads the reference's features at its own step."""
        n = len(t) // 2
        return torch.cat([t[:n], t[:n]])

    def replace_output(self, site: AttnSite, step: int | None, q: Tensor, k: Tensor, v: Tensor) -> Tensor | None:
        n, hw = len(q) // 2, (site.height, site.width)
        refs = attention(q[:n], k[:n], v[:n], site.heads)
        refs_kv = [ReferenceKeys(k[:n], v[:n], self.at(self.mask_ref, hw))]  # each target: its own reference
        targets = sr_attention(q[n:], k[n:], v[n:], refs_kv, [self.at(self.mask_tgt, hw)], site.heads)
        return torch.cat([refs, targets])


def pair_words(scene: Scene, bound: int, rng: np.random.Generator) -> Words:
    """A stage-3 target's caption: its bound object (the one that attends to the reference) never with its texture
    and with its colour half the time, so the reference must supply them; any other object as in stage 2."""
    n = len(scene.objects())
    colours = [bool(rng.random() > 0.15) for _ in range(n)]
    textures = [bool(rng.random() > 0.3) for _ in range(n)]
    colours[bound], textures[bound] = bool(rng.random() < 0.5), False
    return scene.caption_words(tuple(colours), tuple(textures), background=bool(rng.random() > 0.25))


@torch.no_grad()
def plain_latents(vae: VAE, pool: Pool, objects: list[tuple[int, int]], latents: Tensor, scale: float) -> Tensor:
    """Per (scene, object): the scene's latents with that object drawn plain ([len(objects), 4, 16, 16]; a plain
    object's are the scene's own)."""
    out = latents[[i for i, _ in objects]].clone()
    textured = [k for k, (i, j) in enumerate(objects) if pool.scenes[i].objects()[j].texture != "plain"]
    for c in range(0, len(textured), 64):
        chunk = textured[c:c + 64]
        images = []
        for k in chunk:
            i, j = objects[k]
            s = pool.scenes[i]
            s = s.with_(texture="plain") if j == 0 else s.with_(other=s.other.with_(texture="plain"))
            images.append(draw_objects(s)[0])
        out[chunk] = encode_pool(vae, stack_images(images)) * scale
    return out


def train_reference_attention(unet: UNet, text: CLIPTextEncoder, tokenizer: CLIPTokenizer, latents: torch.Tensor,
                              pool: Pool, steps: int, seed: int, recipe: Recipe = Recipe(), pairs: int = 8,
                              lr: float = 5e-4, object_weight: float = OBJECT_WEIGHT,
                              hide_pattern: float = HIDE_PATTERN, plain: Tensor | None = None,
                              ckpt: Checkpoint | None = None,
                              log: Callable[[str], None] = print) -> tuple[dict, dict]:
    """Stage 3: fine-tune on pairs of objects (of any scenes) that share colour and texture (any shape, place,
    background, other object), the second one's scene denoised through SR-attn to the first (PairedSRAttention)
    with a caption that omits the bound object's texture. The word loss is kept.
    hide_pattern: the fraction of targets whose noisy input shows their bound object plain (`plain`: per object of
    `pool_objects(pool)`, the latents with that object drawn plain) at t >= HIDE_FROM_T, while the loss still asks
    for the patterned object's noise: the target's own pattern cannot be read off its input, so only the reference
    can supply it. Without it the model reads the kind of pattern off the target's own noisy object and the
    reference only decides its colour and plain vs patterned (assets/toy-sd/README.md).

    Real SD's self-attention matches corresponding pixels across images from web-scale training; this toy model's
    never needed to (its self-attention is nearly uniform), so it is taught that here. The editor is unchanged.
    """
    if hide_pattern and plain is None:
        raise ValueError("hide_pattern needs `plain`, the latents of the scenes with each object drawn plain")
    rng, gen = np.random.default_rng(seed + 2), torch.Generator().manual_seed(seed + 2)
    objects = pool_objects(pool)
    groups: dict[tuple[str, str], list[int]] = {}
    for k, (i, j) in enumerate(objects):
        o = pool.scenes[i].objects()[j]
        groups.setdefault((o.colour, o.texture), []).append(k)
    order = Batches(len(objects), pairs, rng)

    def next_batch() -> Batch:
        refs = next(order)
        # an object of another scene with the same colour and texture (the reference itself only in a tiny pool)
        tgts = np.array([rng.choice([m for m in groups[key(k)] if objects[m][0] != objects[k][0]] or [k])
                         for k in refs])
        ri, ti = [objects[k][0] for k in refs], [objects[k][0] for k in tgts]
        words = ([random_words(pool.scenes[i], rng) for i in ri]
                 + [pair_words(pool.scenes[objects[k][0]], objects[k][1], rng) for k in tgts])
        mask_ref = torch.stack([pool.covers[i, j] for i, j in (objects[k] for k in refs)])
        mask_tgt = torch.stack([pool.covers[i, j] for i, j in (objects[k] for k in tgts)])
        weight = torch.cat([torch.ones_like(mask_ref), 1 + (object_weight - 1) * mask_tgt])[:, None]
        shown = None
        if hide_pattern:
            hide = torch.from_numpy(rng.random(len(tgts)) < hide_pattern)
            shown = torch.cat([latents[ri], torch.where(hide.view(-1, 1, 1, 1), plain[tgts], latents[ti])])
        idx = ri + ti
        return Batch(latents[idx], words, pool.covers[idx], PairedSRAttention(mask_ref, mask_tgt), weight, shown)

    def key(k: int) -> tuple[str, str]:
        o = pool.scenes[objects[k][0]].objects()[objects[k][1]]
        return o.colour, o.texture

    return diffusion_training(unet, text, tokenizer, next_batch, steps, rng, gen, lr, 20, recipe, "sr  ", ckpt,
                              order, log)


def pool_shapes(pool: Pool) -> list[list[tuple[float, float, float]]]:
    """Each scene's objects as (cx, cy, r), units of SIZE: where the VAE's crops go."""
    return [[(o.cx, o.cy, o.r) for o in s.objects()] for s in pool.scenes]


def pool_objects(pool: Pool) -> list[tuple[int, int]]:
    """(scene index, object index) of every object of the pool."""
    return [(i, j) for i, s in enumerate(pool.scenes) for j in range(len(s.objects()))]


# ---- all stages -------------------------------------------------------------------------------------------------

def stage_file(work: Path | None, name: str) -> Path | None:
    return None if work is None else work / f"{name}.pt"


def load_stage(path: Path | None, settings: dict) -> dict | None:
    """A finished stage's saved result, if its file exists (its settings must match)."""
    if path is None or not path.exists():
        return None
    saved = torch.load(path, weights_only=True)
    if saved.get("settings") != settings:
        raise ValueError(f"{path} holds a stage trained with {saved.get('settings')}, not {settings}; "
                         "delete it or pass another --work folder")
    return saved


def save_stage(path: Path | None, settings: dict, **parts: object) -> None:
    if path is not None:
        tmp = path.with_name(path.name + ".tmp")
        torch.save({"settings": settings, **parts}, tmp)
        os.replace(tmp, path)


def train(seed: int = 0, vae_steps: int = VAE_STEPS, unet_steps: int = UNET_STEPS, sr_steps: int = SR_STEPS,
          pool: int = POOL, two: float = TWO_OBJECTS, amp: bool = False, recipe: Recipe = Recipe(),
          hide_pattern: float = HIDE_PATTERN, work: Path | None = None, every: int = CHECKPOINT_EVERY,
          log: Callable[[str], None] = print) -> tuple[StableDiffusion, dict]:
    """All three stages; returns the model (EMA weights) and a training record.
    work: a folder for the stage files (vae.pt, t2i.pt, sr.pt: loaded if they exist with the same settings) and
    the running stage's checkpoint (<stage>.ckpt.pt, every `every` steps; a rerun resumes from it).
    hide_pattern: see train_reference_attention."""
    if not 0 <= hide_pattern <= 1:
        raise ValueError(f"hide_pattern is a fraction of the stage-3 targets, in [0, 1]; got {hide_pattern}")
    if work is not None:
        work.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    times, t0 = {}, time.time()
    data = make_pool(pool, seed, two)
    times["data_s"] = time.time() - t0
    vae, unet, text = VAE(VAE_CONFIG), UNet(UNET_CONFIG), CLIPTextEncoder(TEXT_CONFIG)
    tokenizer = CLIPTokenizer.bundled()
    # each stage's settings include the earlier stages': a stage file is only used by a run that would make it
    s1 = {"seed": seed, "vae_steps": vae_steps, "pool": pool, "two_objects": two, "amp": amp,
          "texture_period": PERIOD, "threads": torch.get_num_threads()}
    s2 = {**s1, "unet_steps": unet_steps, **{k: (list(v) if isinstance(v, tuple) else v)
                                             for k, v in recipe.__dict__.items()}}
    s3 = {**s2, "sr_steps": sr_steps, "hide_pattern": hide_pattern}
    loaded: list[str] = []

    t0 = time.time()
    if (saved := load_stage(stage_file(work, "vae"), s1)) is not None:
        vae.load_state_dict(saved["vae"])
        vae_losses = saved["losses"]
        loaded.append("vae")
    else:
        vae_losses = train_vae(vae, data.images, vae_steps, seed, amp=amp, objects=pool_shapes(data),
                               ckpt=Checkpoint(stage_file(work, "vae.ckpt"), s1, every, log), log=log)
        save_stage(stage_file(work, "vae"), s1, vae=vae.state_dict(), losses=vae_losses)
        Checkpoint(stage_file(work, "vae.ckpt"), s1).done()
    vae.eval().requires_grad_(False)
    times["vae_s"] = time.time() - t0

    t0 = time.time()
    means = encode_pool(vae, data.images)
    # SD's scaling factor makes latents unit-variance; ours is measured the same way (SD v1: 0.18215).
    scale = round(1.0 / float(means.std()), 5)
    vae.config = VAEConfig(**{**VAE_CONFIG.__dict__, "scaling_factor": scale})
    times["encode_s"] = time.time() - t0
    t0 = time.time()
    if (saved := load_stage(stage_file(work, "t2i"), s2)) is not None:
        unet.load_state_dict(saved["unet"])
        text.load_state_dict(saved["text_encoder"])
        ema, unet_losses = {"unet": unet, "text_encoder": text}, saved["losses"]
        loaded.append("t2i")
    else:
        unet_losses, ema = train_unet(unet, text, tokenizer, means * scale, data, unet_steps, seed, recipe,
                                      ckpt=Checkpoint(stage_file(work, "t2i.ckpt"), s2, every, log), log=log)
        save_stage(stage_file(work, "t2i"), s2, unet=ema["unet"].state_dict(),
                   text_encoder=ema["text_encoder"].state_dict(), losses=unet_losses)
        Checkpoint(stage_file(work, "t2i.ckpt"), s2).done()
    times["unet_s"] = time.time() - t0

    t0 = time.time()
    sr_losses: dict[str, list[float]] = {"loss": [], "word": []}
    if sr_steps:  # stage 3 fine-tunes stage 2's averaged weights
        if (saved := load_stage(stage_file(work, "sr"), s3)) is not None:
            for k in ("unet", "text_encoder"):
                ema[k].load_state_dict(saved[k])
            sr_losses = saved["losses"]
            loaded.append("sr")
        else:
            unet, text = (copy.deepcopy(ema[k]).requires_grad_(True) for k in ("unet", "text_encoder"))
            plain = plain_latents(vae, data, pool_objects(data), means * scale, scale) if hide_pattern else None
            sr_losses, ema = train_reference_attention(
                unet, text, tokenizer, means * scale, data, sr_steps, seed, recipe, hide_pattern=hide_pattern,
                plain=plain, ckpt=Checkpoint(stage_file(work, "sr.ckpt"), s3, every, log), log=log)
            save_stage(stage_file(work, "sr"), s3, unet=ema["unet"].state_dict(),
                       text_encoder=ema["text_encoder"].state_dict(), losses=sr_losses)
            Checkpoint(stage_file(work, "sr.ckpt"), s3).done()
    times["sr_s"] = time.time() - t0
    sd = StableDiffusion(tokenizer, ema["text_encoder"].eval(), ema["unet"].eval(), vae, scale, dict(SCHEDULER))
    curve = lambda losses: [round(float(np.mean(losses[i:i + 50])), 5) for i in range(0, len(losses), 50)]  # noqa: E731
    record = {**s3, "vae_amp_bfloat16": amp, "unet_heads": list(HEADS), "min_snr_gamma": MIN_SNR,
              "offset_noise": OFFSET_NOISE, "sr_blocks": [SR_BLOCKS.start, SR_BLOCKS.stop],
              "sr_object_weight": OBJECT_WEIGHT, "torch": torch.__version__, "cpu": cpu_name(),
              "scaling_factor": scale, "seconds": {k: round(v, 1) for k, v in times.items()},
              "vae_loss_first": vae_losses[:5], "unet_loss_first": unet_losses["loss"][:5],
              "sr_loss_first": sr_losses["loss"][:5], "unet_word_loss_first": unet_losses["word"][:5],
              "vae_loss_curve": curve(vae_losses), "unet_loss_curve": curve(unet_losses["loss"]),
              "unet_word_loss_curve": curve(unet_losses["word"]), "sr_loss_curve": curve(sr_losses["loss"]),
              "sr_word_loss_curve": curve(sr_losses["word"])}
    if loaded:
        record["stages_loaded"] = {k: str(stage_file(work, k)) for k in loaded}
    return sd, record


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo), for the record: determinism holds per CPU kind."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def model_settings(recipe: Recipe) -> dict:
    """specref.json: the model's own edit settings (the level its words are read at)."""
    return {"edit_defaults": {"map_blocks": list(recipe.map_blocks)}}


def main(argv: list[str] | None = None) -> int:
    """Train, then write the diffusers folder (float16 safetensors), training.json and specref.json."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(ROOT / "assets" / "toy-sd"))
    p.add_argument("--work", type=Path, default=None,
                   help="folder for the stage files and checkpoints (a rerun loads and resumes from them)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (the result depends on it)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--vae-steps", type=int, default=VAE_STEPS)
    p.add_argument("--unet-steps", type=int, default=UNET_STEPS)
    p.add_argument("--sr-steps", type=int, default=SR_STEPS, help="stage 3 (reference attention) steps; 0: none")
    p.add_argument("--pool", type=int, default=POOL, help="number of distinct training scenes")
    p.add_argument("--two-objects", type=float, default=TWO_OBJECTS, help="fraction of scenes with two objects")
    p.add_argument("--vae-bf16", action="store_true", help="train the VAE in bfloat16 autocast (CPUs with native bf16)")
    p.add_argument("--word-weight", type=float, default=WORD_WEIGHT, help="the word loss's weight (0: none)")
    p.add_argument("--map-blocks", default=",".join(map(str, MAP_BLOCKS)),
                   help="cross-attention blocks (one map size) the word loss reads: the model's word level")
    p.add_argument("--word-loss", choices=("kl", "share", "kl+share"), default=Recipe.word_loss,
                   help="the word loss's kind (word_loss)")
    p.add_argument("--hide-pattern", type=float, default=HIDE_PATTERN,
                   help="stage 3: fraction of targets whose noisy input shows their object plain (0: off)")
    p.add_argument("--every", type=int, default=CHECKPOINT_EVERY, help="steps between checkpoints")
    p.add_argument("--overwrite", action="store_true", help="replace the model already in --out")
    args = p.parse_args(argv)
    if Path(args.out).exists() and any(Path(args.out).iterdir()) and not args.overwrite:
        p.error(f"--out {args.out} already holds files (the shipped model by default): give another folder, or "
                f"--overwrite to replace them once training ends")
    torch.set_num_threads(args.threads)
    recipe = Recipe(word_weight=args.word_weight, map_blocks=tuple(int(b) for b in args.map_blocks.split(",")),
                    word_loss=args.word_loss)
    t0 = time.time()
    sd, record = train(args.seed, args.vae_steps, args.unet_steps, args.sr_steps, args.pool, args.two_objects,
                       amp=args.vae_bf16, recipe=recipe, hide_pattern=args.hide_pattern, work=args.work,
                       every=args.every, log=lambda s: print(s, flush=True))
    record["seconds"]["total"] = round(time.time() - t0, 1)
    out = save_folder(sd, args.out, dtype=torch.float16)
    (out / "training.json").write_text(json.dumps(record, indent=1))
    (out / "specref.json").write_text(json.dumps(model_settings(recipe), indent=1) + "\n")
    print(f"wrote {out} in {record['seconds']['total']:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
