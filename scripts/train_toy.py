#!/usr/bin/env python
"""Train the embedded demo model (assets/toy-sd): a small SD v1-architecture model on synthetic scenes.

    python scripts/train_toy.py [--out assets/toy-sd] [--seed 0] [--vae-steps 1000] [--unet-steps 2500]

Same UNet/VAE/CLIP code and config format as SD v1 (4 UNet levels, 16 transformer blocks, 8x VAE, the real
CLIP tokenizer), small widths, 128² images (16² latents: every SD v1 attention level exists, down to 2² mid).
Stage 1 trains the VAE (L1 + MSE, KL 1e-6 as in SD), stage 2 the UNet and text encoder together
(epsilon prediction on the SD v1 noise schedule with offset noise and Min-SNR weights, 10 % empty captions
for classifier-free guidance, EMA).
CPU-only and deterministic for a given seed and thread count; about 40 minutes on 2 cores.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]

from model import (CLIPTextConfig, CLIPTextEncoder, CLIPTokenizer, StableDiffusion, UNet, UNetConfig,  # noqa: E402
                   VAE, VAEConfig)
from sampling import DDIM  # noqa: E402
from toy_scenes import SIZE, batch, random_caption, random_scene  # noqa: E402
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


def autocast(enabled: bool) -> contextlib.AbstractContextManager:
    """bfloat16 autocast on the CPU, or nothing (1.6x faster for the VAE here; no gain for the small UNet)."""
    return torch.autocast("cpu", torch.bfloat16) if enabled else contextlib.nullcontext()


def lr_at(step: int, total: int, peak: float, warmup: int = 50) -> float:
    """Linear warm-up, then cosine decay to 10 % of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup))))


def make_pool(n: int, seed: int) -> tuple[list, torch.Tensor]:
    """n random scenes and their images as uint8 [n, 3, 128, 128]."""
    rng = np.random.default_rng(seed)
    scenes = [random_scene(rng) for _ in range(n)]
    return scenes, torch.from_numpy(batch(scenes))


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 -> float in [-1, 1]."""
    return images.float() / 127.5 - 1


def vae_loss(vae: VAE, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """L1 + MSE reconstruction from a posterior sample, plus SD's tiny KL term (weight 1e-6)."""
    mean, logvar = vae.quant_conv(vae.encoder(x)).chunk(2, dim=1)
    logvar = logvar.clamp(-30, 20)
    z = mean + (0.5 * logvar).exp() * torch.randn(mean.shape, generator=gen, dtype=mean.dtype)
    y = vae.decode(z).float()
    kl = 0.5 * (mean.float() ** 2 + logvar.float().exp() - 1 - logvar.float()).sum(dim=(1, 2, 3)).mean()
    return (y - x).abs().mean() + ((y - x) ** 2).mean() + 1e-6 * kl


def train_vae(vae: VAE, images: torch.Tensor, steps: int, seed: int, batch_size: int = 16, crop: int = 64,
              lr: float = 5e-4, amp: bool = True, log: Callable[[str], None] = print) -> list[float]:
    """Stage 1: the VAE on random crops (the last 10 % of steps on whole images); returns the losses."""
    rng, gen = np.random.default_rng(seed), torch.Generator().manual_seed(seed)
    with torch.no_grad():  # start the posterior narrow (std ~0.02): unit noise would drown the untrained mean
        vae.quant_conv.bias[vae.config.latent_channels:] = -8.0
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    losses, t0 = [], time.time()
    for step in range(steps):
        whole = step >= int(0.9 * steps)
        idx = rng.integers(0, len(images), batch_size // 4 if whole else batch_size)
        x = to_unit(images[idx])
        if not whole:  # crops: a 4x cheaper step that still sees every part of a scene
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
    return losses


@torch.no_grad()
def encode_pool(vae: VAE, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Posterior means of every image, [n, 4, 16, 16] (unscaled)."""
    return torch.cat([vae.encode(to_unit(images[i:i + batch_size])) for i in range(0, len(images), batch_size)])


def batches(n: int, batch_size: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Endless shuffled mini-batches of indices."""
    while True:
        perm = rng.permutation(n)
        for i in range(0, n - batch_size + 1, batch_size):
            yield perm[i:i + batch_size]


def train_unet(unet: UNet, text: CLIPTextEncoder, tokenizer: CLIPTokenizer, latents: torch.Tensor, scenes: list,
               steps: int, seed: int, batch_size: int = 32, lr: float = 5e-4, ema_decay: float = 0.999,
               amp: bool = False, min_snr: float | None = MIN_SNR, offset_noise: float = OFFSET_NOISE,
               log: Callable[[str], None] = print) -> tuple[list[float], dict]:
    """Stage 2: UNet + text encoder, epsilon prediction; returns the losses and the EMA weights.

    min_snr: Min-SNR-gamma loss weights (Hang et al. 2023), min(SNR, gamma) / SNR for epsilon prediction:
    less weight on the nearly clean steps, where the loss is easy and the text matters least.
    offset_noise: std of a per-image, per-channel constant added to the noise (see OFFSET_NOISE).
    """
    rng, gen = np.random.default_rng(seed + 1), torch.Generator().manual_seed(seed + 1)
    alpha_bar = DDIM(1, SCHEDULER).alphas_cumprod  # the schedule train() saves with the model
    snr = alpha_bar / (1 - alpha_bar)
    weight = snr.clamp(max=min_snr) / snr if min_snr else torch.ones_like(snr)
    params = list(unet.parameters()) + list(text.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    modules = {"unet": unet, "text_encoder": text}
    ema = {k: copy.deepcopy(m).requires_grad_(False) for k, m in modules.items()}
    losses, t0, order = [], time.time(), batches(len(latents), batch_size, rng)
    for step in range(steps):
        idx = next(order)
        x0 = latents[idx]
        ids = tokenizer([random_caption(scenes[i], rng) for i in idx])
        t = torch.randint(0, len(alpha_bar), (len(idx),), generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        noise = noise + offset_noise * torch.randn((*x0.shape[:2], 1, 1), generator=gen)
        a = alpha_bar[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, lr, warmup=100)
        with autocast(amp):
            err = ((unet(xt, t, text(ids)).float() - noise) ** 2).mean(dim=(1, 2, 3))
        loss = (err * weight[t]).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(ema_decay, (1 + step) / (10 + step))  # short warm-up of the average
        with torch.no_grad():
            for k, m in modules.items():
                for pe, p in zip(ema[k].parameters(), m.parameters()):
                    pe.lerp_(p, 1 - decay)
        losses.append(float(loss.detach()))
        if (step + 1) % 50 == 0 or step == steps - 1:
            log(f"unet step {step + 1}/{steps}  loss {np.mean(losses[-50:]):.4f}  {time.time() - t0:.0f}s")
    return losses, ema


def train(seed: int = 0, vae_steps: int = 1000, unet_steps: int = 2500, pool: int = 4000, amp: bool = True,
          log: Callable[[str], None] = print) -> tuple[StableDiffusion, dict]:
    """Both stages from scratch; returns the model (EMA weights) and a training record."""
    torch.manual_seed(seed)
    times, t0 = {}, time.time()
    scenes, images = make_pool(pool, seed)
    times["data_s"] = time.time() - t0
    vae, unet, text = VAE(VAE_CONFIG), UNet(UNET_CONFIG), CLIPTextEncoder(TEXT_CONFIG)
    t0 = time.time()
    vae_losses = train_vae(vae, images, vae_steps, seed, amp=amp, log=log)
    vae.eval().requires_grad_(False)
    times["vae_s"] = time.time() - t0
    t0 = time.time()
    means = encode_pool(vae, images)
    # SD's scaling factor makes latents unit-variance; ours is measured the same way (SD v1: 0.18215).
    scale = round(1.0 / float(means.std()), 5)
    vae_cfg = VAEConfig(**{**VAE_CONFIG.__dict__, "scaling_factor": scale})
    vae.config = vae_cfg
    tokenizer = CLIPTokenizer.bundled()
    unet_losses, ema = train_unet(unet, text, tokenizer, means * scale, scenes, unet_steps, seed, log=log)
    times["unet_s"] = time.time() - t0
    sd = StableDiffusion(tokenizer, ema["text_encoder"].eval(), ema["unet"].eval(), vae, scale, dict(SCHEDULER))
    record = {"seed": seed, "vae_steps": vae_steps, "unet_steps": unet_steps, "pool": pool, "vae_amp_bfloat16": amp,
              "unet_heads": list(HEADS), "min_snr_gamma": MIN_SNR, "offset_noise": OFFSET_NOISE,
              "threads": torch.get_num_threads(), "torch": torch.__version__, "scaling_factor": scale,
              "seconds": {k: round(v, 1) for k, v in times.items()},
              "vae_loss_first": vae_losses[:5], "unet_loss_first": unet_losses[:5],
              "vae_loss_curve": [round(float(np.mean(vae_losses[i:i + 50])), 5) for i in range(0, len(vae_losses), 50)],
              "unet_loss_curve": [round(float(np.mean(unet_losses[i:i + 50])), 5)
                                  for i in range(0, len(unet_losses), 50)]}
    return sd, record


def main() -> int:
    """Train, then write the diffusers folder (float16 safetensors) and training.json."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(ROOT / "assets" / "toy-sd"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--vae-steps", type=int, default=1000)
    p.add_argument("--unet-steps", type=int, default=2500)
    p.add_argument("--pool", type=int, default=4000, help="number of distinct training scenes")
    p.add_argument("--no-amp", action="store_true", help="train the VAE in float32 instead of bfloat16 autocast")
    args = p.parse_args()
    t0 = time.time()
    sd, record = train(args.seed, args.vae_steps, args.unet_steps, args.pool, amp=not args.no_amp,
                       log=lambda s: print(s, flush=True))
    record["seconds"]["total"] = round(time.time() - t0, 1)
    out = save_folder(sd, args.out, dtype=torch.float16)
    (out / "training.json").write_text(json.dumps(record, indent=1))
    print(f"wrote {out} in {record['seconds']['total']:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
