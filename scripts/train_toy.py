#!/usr/bin/env python
"""Train the embedded demo model (assets/toy-sd): a small SD v1-architecture model on synthetic scenes.

    python scripts/train_toy.py [--out assets/toy-sd] [--seed 0] [--vae-steps 1000] [--unet-steps 2000] \
        [--sr-steps 1200] [--stage2 FILE] [--hide-pattern 0.5]

Same UNet/VAE/CLIP code and config format as SD v1 (4 UNet levels, 16 transformer blocks, 8x VAE, the real
CLIP tokenizer), small widths, 128² images (16² latents: every SD v1 attention level exists, down to 2² mid).
Stage 1 trains the VAE (L1 + MSE, KL 1e-6 as in SD), stage 2 the UNet and text encoder together
(epsilon prediction on the SD v1 noise schedule with offset noise and Min-SNR weights, 10 % empty captions
for classifier-free guidance, EMA). Stage 3 fine-tunes both on pairs of scenes through SR-attn
(PairedSRAttention), half the targets with their pattern hidden: what real SD learnt from web-scale images, that
self-attention can find an object's look in another image, this model is taught on purpose; the editor itself is
training-free and unchanged.
CPU-only and deterministic for a given seed and thread count; 40-55 minutes on 2 cores.
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
import torch.nn.functional as F
from torch import Tensor

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]

from model import (AttentionHook, AttnSite, CLIPTextConfig, CLIPTextEncoder, CLIPTokenizer,  # noqa: E402
                   StableDiffusion, UNet, UNetConfig, VAE, VAEConfig, attention)
from sampling import DDIM  # noqa: E402
from specref.srattn import sr_attention  # noqa: E402
from toy_scenes import PERIOD, SIZE, Scene, draw, random_caption, random_scene  # noqa: E402
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


def stack_images(images: list) -> torch.Tensor:
    """RGB PIL images -> uint8 [n, 3, H, W]."""
    return torch.from_numpy(np.stack([np.asarray(im).transpose(2, 0, 1) for im in images]))


def make_pool(n: int, seed: int) -> tuple[list, torch.Tensor, torch.Tensor]:
    """n random scenes, their images as uint8 [n, 3, 128, 128] and object masks at the latent size, [n, 16, 16]
    (the fraction of each latent pixel the object covers)."""
    rng = np.random.default_rng(seed)
    scenes = [random_scene(rng) for _ in range(n)]
    drawn = [draw(s) for s in scenes]
    masks = torch.from_numpy(np.stack([np.asarray(m) for _, m in drawn])).float().div(255)
    return scenes, stack_images([im for im, _ in drawn]), F.avg_pool2d(masks[:, None], 8)[:, 0]


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


# One training batch: clean latents, captions, the attention hook to train with (None: the plain model), per-pixel
# loss weights at the latent size ([B, 1, 16, 16], or None: uniform) and latents to noise in place of the clean
# ones at t >= HIDE_FROM_T (None: the clean ones; see train_reference_attention's hide_pattern).
Batch = tuple[Tensor, list[str], "PairedSRAttention | None", "Tensor | None", "Tensor | None"]
HIDE_FROM_T = 200
HIDE_PATTERN = 0.5  # the shipped recipe's fraction (train_reference_attention's hide_pattern)


def diffusion_training(unet: UNet, text: CLIPTextEncoder, tokenizer: CLIPTokenizer, next_batch: Callable[[], Batch],
                       steps: int, gen: torch.Generator, lr: float, warmup: int, ema_decay: float,
                       min_snr: float | None, offset_noise: float, name: str,
                       log: Callable[[str], None]) -> tuple[list[float], dict]:
    """UNet + text encoder, epsilon prediction on the SD v1 schedule; returns the losses and the EMA weights.

    min_snr: Min-SNR-gamma loss weights (Hang et al. 2023), min(SNR, gamma) / SNR for epsilon prediction:
    less weight on the nearly clean steps, where the loss is easy and the text matters least.
    offset_noise: std of a per-image, per-channel constant added to the noise (see OFFSET_NOISE).
    """
    alpha_bar = DDIM(1, SCHEDULER).alphas_cumprod  # the schedule train() saves with the model
    snr = alpha_bar / (1 - alpha_bar)
    weight = snr.clamp(max=min_snr) / snr if min_snr else torch.ones_like(snr)
    params = list(unet.parameters()) + list(text.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    modules = {"unet": unet, "text_encoder": text}
    ema = {k: copy.deepcopy(m).requires_grad_(False) for k, m in modules.items()}
    losses, t0 = [], time.time()
    for step in range(steps):
        x0, captions, hook, pixel_weight, shown = next_batch()
        ids = tokenizer(captions)
        t = torch.randint(0, len(alpha_bar), (len(x0),), generator=gen)
        if hook is not None:
            t = hook.share_timesteps(t)
        noise = torch.randn(x0.shape, generator=gen)
        noise = noise + offset_noise * torch.randn((*x0.shape[:2], 1, 1), generator=gen)
        a = alpha_bar[t].view(-1, 1, 1, 1)
        shown = x0 if shown is None else torch.where((t >= HIDE_FROM_T).view(-1, 1, 1, 1), shown, x0)
        xt = a.sqrt() * shown + (1 - a).sqrt() * noise
        label = noise + (a / (1 - a)).sqrt() * (shown - x0)  # (xt - sqrt(a) x0) / sqrt(1 - a): x0's noise
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, lr, warmup=warmup)
        with unet.hooked(hook, SR_BLOCKS, ("self",)) if hook else contextlib.nullcontext():
            err = (unet(xt, t, text(ids)).float() - label) ** 2
        err = (err if pixel_weight is None else err * pixel_weight).mean(dim=(1, 2, 3))
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
            log(f"{name} step {step + 1}/{steps}  loss {np.mean(losses[-50:]):.4f}  {time.time() - t0:.0f}s")
    return losses, ema


def train_unet(unet: UNet, text: CLIPTextEncoder, tokenizer: CLIPTokenizer, latents: torch.Tensor, scenes: list,
               steps: int, seed: int, batch_size: int = 32, lr: float = 5e-4, ema_decay: float = 0.999,
               min_snr: float | None = MIN_SNR, offset_noise: float = OFFSET_NOISE,
               log: Callable[[str], None] = print) -> tuple[list[float], dict]:
    """Stage 2: text-to-image on single scenes, 10 % empty captions; returns the losses and the EMA weights."""
    rng, gen = np.random.default_rng(seed + 1), torch.Generator().manual_seed(seed + 1)
    order = batches(len(latents), batch_size, rng)

    def next_batch() -> Batch:
        idx = next(order)
        return latents[idx], [random_caption(scenes[i], rng) for i in idx], None, None, None

    return diffusion_training(unet, text, tokenizer, next_batch, steps, gen, lr, 100, ema_decay, min_snr,
                              offset_noise, "unet", log)


# Stage 3 trains SR-attn's blocks (SPEC §4.4's default SR layers, up blocks 2-3).
SR_BLOCKS = range(10, 16)
# Stage 3's loss weight on a target's object pixels (1 elsewhere): the texture is a small part of the whole
# image's error, and with uniform weights 300 steps learnt to copy the reference's colour but not its texture.
OBJECT_WEIGHT = 5.0
SR_STEPS = 1200


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
        targets = sr_attention(q[n:], k[n:], v[n:], k[:n], v[:n], site.heads, self.at(self.mask_ref, hw),
                               self.at(self.mask_tgt, hw))
        return torch.cat([refs, targets])


def pair_caption(scene: Scene, rng: np.random.Generator) -> str:
    """A stage-3 target's caption: never the texture, the colour half the time, so the reference must supply them."""
    return scene.caption(colour=rng.random() < 0.5, texture=False, background=rng.random() > 0.25)


def train_reference_attention(unet: UNet, text: CLIPTextEncoder, tokenizer: CLIPTokenizer, latents: torch.Tensor,
                              masks: torch.Tensor, scenes: list, steps: int, seed: int, pairs: int = 8,
                              lr: float = 5e-4, ema_decay: float = 0.999, object_weight: float = OBJECT_WEIGHT,
                              hide_pattern: float = HIDE_PATTERN, plain: Tensor | None = None,
                              log: Callable[[str], None] = print) -> tuple[list[float], dict]:
    """Stage 3: fine-tune on pairs of scenes whose objects share colour and texture (any shape, place, background),
    the second one denoised through SR-attn to the first (PairedSRAttention) with a caption that omits the texture.
    hide_pattern: the fraction of targets whose noisy input shows their object plain (`plain`: the latents of the
    scenes drawn plain) at t >= HIDE_FROM_T, while the loss still asks for the patterned object's noise: the
    target's own pattern cannot be read off its input, so only the reference can supply it. Without it the model
    reads the kind of pattern off the target's own noisy object and the reference only decides its colour and
    plain vs patterned (assets/toy-sd/README.md).

    Real SD's self-attention matches corresponding pixels across images from web-scale training; this toy model's
    never needed to (its self-attention is nearly uniform), so it is taught that here. The editor is unchanged.
    """
    if hide_pattern and plain is None:
        raise ValueError("hide_pattern needs `plain`, the latents of the scenes drawn plain")
    rng, gen = np.random.default_rng(seed + 2), torch.Generator().manual_seed(seed + 2)
    groups: dict[tuple[str, str], list[int]] = {}
    for i, s in enumerate(scenes):
        groups.setdefault((s.colour, s.texture), []).append(i)
    order = batches(len(latents), pairs, rng)

    def next_batch() -> Batch:
        refs = next(order)
        # another scene with the same object colour and texture (the reference itself only in a tiny pool)
        tgts = np.array([rng.choice([j for j in groups[(scenes[i].colour, scenes[i].texture)] if j != i] or [i])
                         for i in refs])
        captions = [random_caption(scenes[i], rng) for i in refs] + [pair_caption(scenes[j], rng) for j in tgts]
        idx = np.concatenate([refs, tgts])
        weight = torch.cat([torch.ones_like(masks[refs]), 1 + (object_weight - 1) * masks[tgts]])[:, None]
        shown = None
        if hide_pattern:
            hide = torch.from_numpy(rng.random(len(tgts)) < hide_pattern)
            shown = torch.cat([latents[refs], torch.where(hide.view(-1, 1, 1, 1), plain[tgts], latents[tgts])])
        return latents[idx], captions, PairedSRAttention(masks[refs], masks[tgts]), weight, shown

    return diffusion_training(unet, text, tokenizer, next_batch, steps, gen, lr, 20, ema_decay, MIN_SNR,
                              OFFSET_NOISE, "sr  ", log)


def train(seed: int = 0, vae_steps: int = 1000, unet_steps: int = 2000, sr_steps: int = SR_STEPS, pool: int = 4000,
          amp: bool = True, log: Callable[[str], None] = print,
          stage2: Path | None = None, hide_pattern: float = HIDE_PATTERN) -> tuple[StableDiffusion, dict]:
    """All three stages; returns the model (EMA weights) and a training record.
    stage2: a file for stages 1-2's result: loaded if it exists (only stage 3 runs), else written after them.
    hide_pattern: see train_reference_attention."""
    if not 0 <= hide_pattern <= 1:
        raise ValueError(f"hide_pattern is a fraction of the stage-3 targets, in [0, 1]; got {hide_pattern}")
    torch.manual_seed(seed)
    times, t0 = {}, time.time()
    scenes, images, masks = make_pool(pool, seed)
    times["data_s"] = time.time() - t0
    vae, unet, text = VAE(VAE_CONFIG), UNet(UNET_CONFIG), CLIPTextEncoder(TEXT_CONFIG)
    tokenizer = CLIPTokenizer.bundled()
    settings = {"seed": seed, "vae_steps": vae_steps, "unet_steps": unet_steps, "pool": pool, "amp": amp,
                "texture_period": PERIOD}
    cached = stage2 is not None and stage2.exists()  # stages 1-2 of an earlier run with the same settings
    saved = torch.load(stage2, weights_only=True) if cached else {}
    if cached and saved.get("settings") != settings:
        raise ValueError(f"{stage2} holds stages 1-2 trained with {saved.get('settings')}, not {settings}; "
                         "delete it or pass another --stage2 file")
    t0 = time.time()
    if cached:
        vae.load_state_dict(saved["vae"])
        vae_losses = saved["vae_losses"]
    else:
        vae_losses = train_vae(vae, images, vae_steps, seed, amp=amp, log=log)
    vae.eval().requires_grad_(False)
    times["vae_s"] = time.time() - t0
    t0 = time.time()
    means = encode_pool(vae, images)
    # SD's scaling factor makes latents unit-variance; ours is measured the same way (SD v1: 0.18215).
    scale = round(1.0 / float(means.std()), 5)
    vae.config = VAEConfig(**{**VAE_CONFIG.__dict__, "scaling_factor": scale})
    if cached:
        unet.load_state_dict(saved["unet"])
        text.load_state_dict(saved["text_encoder"])
        ema, unet_losses = {"unet": unet, "text_encoder": text}, saved["unet_losses"]
    else:
        unet_losses, ema = train_unet(unet, text, tokenizer, means * scale, scenes, unet_steps, seed, log=log)
        if stage2 is not None:
            torch.save({"vae": vae.state_dict(), "unet": ema["unet"].state_dict(),
                        "text_encoder": ema["text_encoder"].state_dict(), "vae_losses": vae_losses,
                        "unet_losses": unet_losses, "settings": settings}, stage2)
    times["unet_s"] = time.time() - t0
    t0 = time.time()
    sr_losses: list[float] = []
    if sr_steps:  # stage 3 fine-tunes stage 2's averaged weights
        unet, text = (copy.deepcopy(ema[k]).requires_grad_(True) for k in ("unet", "text_encoder"))
        plain = None
        if hide_pattern:
            plain_images = stack_images([draw(s.with_(texture="plain"))[0] for s in scenes])
            plain = encode_pool(vae, plain_images) * scale
        sr_losses, ema = train_reference_attention(unet, text, tokenizer, means * scale, masks, scenes, sr_steps,
                                                   seed, hide_pattern=hide_pattern, plain=plain, log=log)
    times["sr_s"] = time.time() - t0
    sd = StableDiffusion(tokenizer, ema["text_encoder"].eval(), ema["unet"].eval(), vae, scale, dict(SCHEDULER))
    curve = lambda losses: [round(float(np.mean(losses[i:i + 50])), 5) for i in range(0, len(losses), 50)]  # noqa: E731
    record = {"seed": seed, "vae_steps": vae_steps, "unet_steps": unet_steps, "sr_steps": sr_steps, "pool": pool,
              "vae_amp_bfloat16": amp, "unet_heads": list(HEADS), "min_snr_gamma": MIN_SNR,
              "offset_noise": OFFSET_NOISE, "sr_blocks": [SR_BLOCKS.start, SR_BLOCKS.stop],
              "sr_object_weight": OBJECT_WEIGHT, "sr_hide_pattern": hide_pattern,
              "threads": torch.get_num_threads(), "torch": torch.__version__,
              "scaling_factor": scale, "seconds": {k: round(v, 1) for k, v in times.items()},
              "vae_loss_first": vae_losses[:5], "unet_loss_first": unet_losses[:5], "sr_loss_first": sr_losses[:5],
              "vae_loss_curve": curve(vae_losses), "unet_loss_curve": curve(unet_losses),
              "sr_loss_curve": curve(sr_losses)}
    if cached:
        record["stages_1_2_loaded_from"] = str(stage2)
    return sd, record


def main() -> int:
    """Train, then write the diffusers folder (float16 safetensors) and training.json."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(ROOT / "assets" / "toy-sd"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--vae-steps", type=int, default=1000)
    p.add_argument("--unet-steps", type=int, default=2000)
    p.add_argument("--sr-steps", type=int, default=SR_STEPS, help="stage 3 (reference attention) steps; 0: none")
    p.add_argument("--pool", type=int, default=4000, help="number of distinct training scenes")
    p.add_argument("--no-amp", action="store_true", help="train the VAE in float32 instead of bfloat16 autocast")
    p.add_argument("--hide-pattern", type=float, default=HIDE_PATTERN,
                   help="stage 3: fraction of targets whose noisy input shows their object plain (0: off)")
    p.add_argument("--stage2", type=Path, default=None,
                   help="file for stages 1-2's weights: loaded if it exists (only stage 3 runs), else written")
    args = p.parse_args()
    t0 = time.time()
    sd, record = train(args.seed, args.vae_steps, args.unet_steps, args.sr_steps, args.pool, amp=not args.no_amp,
                       log=lambda s: print(s, flush=True), stage2=args.stage2,
                       hide_pattern=args.hide_pattern)
    record["seconds"]["total"] = round(time.time() - t0, 1)
    out = save_folder(sd, args.out, dtype=torch.float16)
    (out / "training.json").write_text(json.dumps(record, indent=1))
    print(f"wrote {out} in {record['seconds']['total']:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
