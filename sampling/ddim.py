"""Deterministic DDIM (eta = 0) and its inversion, SPEC §2."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Schedule:
    """The noise schedule and timestep settings; `from_config` reads a diffusers scheduler_config.json dict."""

    num_train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    beta_schedule: str = "scaled_linear"
    set_alpha_to_one: bool = True  # SPEC §2: alpha_bar before t=0 is 1.0
    steps_offset: int = 1

    @classmethod
    def from_config(cls, config: dict, **overrides) -> "Schedule":
        """Noise schedule from a diffusers config; set_alpha_to_one/steps_offset stay the method's (SPEC §2)."""
        if config.get("prediction_type", "epsilon") != "epsilon":
            raise ValueError(f"prediction_type {config['prediction_type']!r} is not supported: "
                             "only 'epsilon' (SD v1) models can be sampled")
        if config.get("trained_betas") is not None:
            raise ValueError("trained_betas are not supported: only 'linear' and 'scaled_linear' beta schedules")
        if config.get("rescale_betas_zero_snr"):
            raise ValueError("rescale_betas_zero_snr is not supported (not an SD v1 schedule)")
        keys = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule")
        return cls(**{k: config[k] for k in keys if config.get(k) is not None}, **overrides)


class DDIM:
    """DDIM over `num_steps` of the train timesteps; `step` denoises, `invert_step` goes up (SPEC §2)."""

    def __init__(self, num_steps: int = 50, config: dict | None = None, **overrides):
        s = Schedule.from_config(config, **overrides) if config is not None else Schedule(**overrides)
        T = s.num_train_timesteps
        if s.beta_schedule == "scaled_linear":
            betas = torch.linspace(s.beta_start**0.5, s.beta_end**0.5, T, dtype=torch.float32) ** 2
        elif s.beta_schedule == "linear":
            betas = torch.linspace(s.beta_start, s.beta_end, T, dtype=torch.float32)
        else:
            raise ValueError(f"beta_schedule {s.beta_schedule!r} is not supported: use 'linear' or 'scaled_linear'")
        if not isinstance(num_steps, int) or not 1 <= num_steps <= T:
            raise ValueError(f"num_steps must be between 1 and num_train_timesteps={T}, got {num_steps}")
        self.schedule, self.num_steps, self.stride = s, num_steps, T // num_steps
        self.alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        self.final_alpha_cumprod = torch.tensor(1.0) if s.set_alpha_to_one else self.alphas_cumprod[0]
        self.timesteps = (torch.arange(num_steps) * self.stride).flip(0) + s.steps_offset
        if self.timesteps[0] >= T:
            raise ValueError(f"num_steps={num_steps} with steps_offset={s.steps_offset} gives timestep "
                             f"{int(self.timesteps[0])}, past the last train timestep {T - 1}")

    def alpha_bar(self, t: int) -> float:
        """alpha_bar[t], or the final value (1.0 by default) for t < 0."""
        return float(self.alphas_cumprod[t] if t >= 0 else self.final_alpha_cumprod)

    @staticmethod
    def _move(x: Tensor, eps: Tensor, a_from: float, a_to: float) -> Tensor:
        # Latents and the DDIM update stay fp32 (float64 in the float64 mode): bf16/fp16 rounding accumulates
        # over 50 steps. The alphas are the float32 schedule's values (SPEC §2) in either mode.
        dt = torch.float64 if torch.float64 in (x.dtype, eps.dtype) else torch.float32
        x, eps = x.to(dt), eps.to(dt)
        return a_to**0.5 * DDIM.predict_x0(x, eps, a_from) + (1 - a_to) ** 0.5 * eps

    @staticmethod
    def predict_x0(x: Tensor, eps: Tensor, a: float) -> Tensor:
        """x0 = (x - sqrt(1 - a) eps) / sqrt(a), the clean latent x and eps predict at alpha_bar a (SPEC §2)."""
        return (x - (1 - a) ** 0.5 * eps) / a**0.5

    def step(self, eps: Tensor, t: int | Tensor, x: Tensor) -> Tensor:
        """x_t -> x_{t - stride} with noise prediction eps (float32 out; float64 for float64 input)."""
        t = int(t)
        return self._move(x, eps, self.alpha_bar(t), self.alpha_bar(t - self.stride))

    def invert_step(self, eps: Tensor, t: int | Tensor, x: Tensor) -> Tensor:
        """x_{t - stride} -> x_t with eps = eps(x, t) (float32 out; float64 for float64 input)."""
        t = int(t)
        return self._move(x, eps, self.alpha_bar(t - self.stride), self.alpha_bar(t))

    def __repr__(self) -> str:
        return f"DDIM(num_steps={self.num_steps}, {self.schedule})"
