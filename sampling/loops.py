"""Text-to-image sampling with classifier-free guidance and DDIM inversion (§2, §3)."""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .ddim import DDIM

# callback(step_index, timestep, latents) -> replacement latents or None
Callback = Callable[[int, int, Tensor], "Tensor | None"]


def batch_eps(sd, x: Tensor, t: int, context: Tensor, step: int) -> Tensor:
    """The UNet's outputs at (x, t) for every context row: [uncond; cond] (2B rows) or cond only (B); noise
    predictions, or v for a v model (guidance and the DDIM update take either, §9.4)."""
    inp = torch.cat([x, x]) if context.shape[0] == 2 * x.shape[0] else x
    return sd.unet(inp.to(sd.dtype), t, context, step=step).to(sd.precise_dtype)


def guide(eps: Tensor, guidance: float, batch: int) -> Tensor:
    """Classifier-free guidance of batch_eps' output (§2): eps_u + w (eps_c - eps_u), or eps if cond only."""
    if eps.shape[0] == batch:
        return eps
    eps_u, eps_c = eps.chunk(2)
    return eps_u + guidance * (eps_c - eps_u)


def guided_eps(sd, x: Tensor, t: int, context: Tensor, guidance: float, step: int) -> Tensor:
    """eps at (x, t): one UNet call; `context` is [uncond; cond] (2B) for CFG or cond only (B) (§2)."""
    return guide(batch_eps(sd, x, t, context, step), guidance, x.shape[0])


def ddim_for(sd, steps: int = 50) -> DDIM:
    """The DDIM of `steps` steps for model `sd`: its scheduler config's noise schedule (when it has one) and its
    prediction type, which a single file does not store and so comes from the loaded model (§2, §9.4)."""
    return DDIM(steps, config=sd.scheduler_config, prediction_type=sd.prediction_type)


def _check_ddim(sd, ddim: DDIM) -> DDIM:
    """A given DDIM must convert the model's output as the model means it (§9.4)."""
    if ddim.prediction_type != sd.prediction_type:
        raise ValueError(f"the DDIM is for prediction_type {ddim.prediction_type!r} but the model predicts "
                         f"{sd.prediction_type!r}: build it with sampling.ddim_for(sd, steps)")
    return ddim


def _prompts(prompt: str | list[str]) -> list[str]:
    return [prompt] if isinstance(prompt, str) else list(prompt)


def _apply(callback: Callback | None, i: int, t: int, x: Tensor) -> Tensor:
    out = callback(i, t, x) if callback is not None else None
    return x if out is None else out


@torch.no_grad()
def sample(sd, prompt: str | list[str], *, negative_prompt: str | list[str] = "", guidance: float = 7.5,
           steps: int = 50, height: int | None = None, width: int | None = None, seed: int = 0,
           generator: torch.Generator | None = None, latents: Tensor | None = None,
           callback: Callback | None = None, progress: bool = True, ddim: DDIM | None = None) -> Tensor:
    """Text-to-image with CFG: returns the final (scaled) latents [B,4,h/8,w/8], float32 (float64 model: float64).

    height/width default to the model's native size (SD v1 and 2.x-base: 512, 2.x-v: 768).
    """
    height, width = height or sd.native_size, width or sd.native_size
    if height % 64 or width % 64 or height <= 0 or width <= 0:
        raise ValueError(f"height and width must be positive multiples of 64, got {height}x{width}")
    if guidance < 0:
        raise ValueError(f"guidance must be >= 0, got {guidance}")
    ddim = _check_ddim(sd, ddim) if ddim is not None else ddim_for(sd, steps)  # a given ddim overrides `steps`
    prompts = _prompts(prompt)
    negs = _prompts(negative_prompt)
    negs = negs * len(prompts) if len(negs) == 1 else negs
    if len(negs) != len(prompts):
        raise ValueError(f"{len(negs)} negative prompts for {len(prompts)} prompts")
    if latents is None:
        gen = generator or torch.Generator().manual_seed(seed)
        # float32 noise in every mode (the float64 mode starts from the same numbers)
        latents = torch.randn((1, 4, height // 8, width // 8), generator=gen, dtype=torch.float32)
    if latents.ndim != 4 or latents.shape[0] not in (1, len(prompts)):
        raise ValueError(f"latents must be [1 or {len(prompts)},4,h,w], got {tuple(latents.shape)}")
    # One start shared by all prompts, as Prompt-to-Prompt does.
    x = latents.to(sd.device, sd.precise_dtype).expand(len(prompts), -1, -1, -1).clone()
    context = sd.encode_prompts(negs + prompts)  # [u; c]
    for i, t in enumerate(tqdm(ddim.timesteps.tolist(), desc="sample", disable=not progress)):
        eps = guided_eps(sd, x, t, context, guidance, step=i)
        x = _apply(callback, i, t, ddim.step(eps, t, x))
    return x


@torch.no_grad()
def invert(sd, latents: Tensor, prompts: list[str], *, guidance: float = 1.0, steps: int = 50,
           callback: Callback | None = None, progress: bool = True, ddim: DDIM | None = None) -> Tensor:
    """DDIM inversion over reversed(timesteps) (§3): every latent z[0..N], [N+1,B,4,h,w] float32 (or float64)."""
    if guidance < 0:
        raise ValueError(f"guidance must be >= 0, got {guidance}")
    prompts = _prompts(prompts)
    if latents.ndim != 4 or latents.shape[0] != len(prompts):
        raise ValueError(f"latents must be [B,4,h,w] with B = {len(prompts)} prompts, got {tuple(latents.shape)}")
    ddim = _check_ddim(sd, ddim) if ddim is not None else ddim_for(sd, steps)
    # §2: guidance 1 is conditional only, no uncond batch.
    context = sd.encode_prompts(prompts if guidance == 1 else [""] * len(prompts) + prompts)
    x = latents.to(sd.device, sd.precise_dtype)
    zs = [x]
    for j, t in enumerate(tqdm(ddim.timesteps.flip(0).tolist(), desc="invert", disable=not progress)):
        eps = guided_eps(sd, x, t, context, guidance, step=j)
        x = _apply(callback, j, t, ddim.invert_step(eps, t, x))
        zs.append(x)
    return torch.stack(zs)


@torch.no_grad()
def reconstruct(sd, latents: Tensor, prompt: str, *, guidance: float = 1.0, steps: int = 50,
                progress: bool = True) -> Tensor:
    """Invert `latents` [1,4,h,w] with `prompt`, then regenerate from the last one: the final latents."""
    ddim = ddim_for(sd, steps)
    zs = invert(sd, latents, [prompt], guidance=guidance, ddim=ddim, progress=progress)
    return sample(sd, prompt, guidance=guidance, latents=zs[-1], ddim=ddim, progress=progress)


@torch.no_grad()
def encode(sd, images: Tensor) -> Tensor:
    """Images [B,3,H,W] in [-1,1] -> scaled latents, float32 or float64 (§2: z = 0.18215 * E(x).mean)."""
    x = images.to(sd.device, sd.dtype)
    # One image at a time, as decode: the full-resolution encoder activations dominate peak memory.
    return torch.cat([sd.vae.encode(xi[None]).to(sd.precise_dtype) for xi in x]) * sd.scaling_factor


@torch.no_grad()
def decode(sd, latents: Tensor) -> Tensor:
    """Scaled latents -> images [B,3,H,W] in [-1,1], float32 or float64 (§2: x = D(z / 0.18215))."""
    z = (latents / sd.scaling_factor).to(sd.device, sd.dtype)
    # One image at a time: the full-resolution decoder activations dominate peak memory.
    return torch.cat([sd.vae.decode(zi[None]).to(sd.precise_dtype) for zi in z]).clamp(-1, 1)
