"""Deterministic DDIM (eta = 0) and its inversion, §2; for epsilon- and v-prediction models (§9.4)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from model import PREDICTION_TYPES


@dataclass(frozen=True)
class Schedule:
    """The noise schedule and timestep settings; `from_config` reads a diffusers scheduler_config.json dict."""

    num_train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    beta_schedule: str = "scaled_linear"
    set_alpha_to_one: bool = True  # §2: alpha_bar before t=0 is 1.0
    steps_offset: int = 1
    prediction_type: str = "epsilon"  # what the model outputs: "epsilon" (SD 1, 2.x-base) or "v_prediction" (§9.4)

    def __post_init__(self) -> None:
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type {self.prediction_type!r} is not supported: "
                             "'epsilon' or 'v_prediction' models can be sampled")

    @classmethod
    def from_config(cls, config: dict, **overrides) -> "Schedule":
        """Noise schedule and prediction type from a diffusers config; set_alpha_to_one/steps_offset stay the
        method's (§2); keyword overrides win over the config."""
        if config.get("trained_betas") is not None:
            raise ValueError("trained_betas are not supported: only 'linear' and 'scaled_linear' beta schedules")
        if config.get("rescale_betas_zero_snr"):
            raise ValueError("rescale_betas_zero_snr is not supported (not an SD v1 schedule)")
        keys = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "prediction_type")
        return cls(**({k: config[k] for k in keys if config.get(k) is not None} | overrides))


class DDIM:
    """DDIM over `num_steps` of the train timesteps; `step` denoises, `invert_step` goes up (§2).

    `overrides` are Schedule fields, e.g. prediction_type="v_prediction" (sampling.ddim_for(sd, steps) sets it
    from the model).
    """

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

    @property
    def prediction_type(self) -> str:
        """What the model outputs: "epsilon" or "v_prediction" (§9.4)."""
        return self.schedule.prediction_type

    def _move(self, x: Tensor, eps: Tensor, a_from: float, a_to: float) -> Tensor:
        # Latents and the DDIM update stay fp32 (float64 in the float64 mode): bf16/fp16 rounding accumulates
        # over 50 steps. The alphas are the float32 schedule's values (§2) in either mode.
        dt = torch.float64 if torch.float64 in (x.dtype, eps.dtype) else torch.float32
        x, eps = x.to(dt), eps.to(dt)
        x0 = self.predict_x0(x, eps, a_from)
        if self.prediction_type == "v_prediction":
            # §9.4: the model output is v; x0 and eps both come from it at a_from, the alpha_bar x0 is read
            # at (as diffusers' DDIMScheduler.step and DDIMInverseScheduler.step do).
            eps = self.predict_eps(x, eps, a_from)
        return a_to**0.5 * x0 + (1 - a_to) ** 0.5 * eps

    def predict_x0(self, x: Tensor, out: Tensor, a: float) -> Tensor:
        """The clean latent that x and the model output predict at alpha_bar a: epsilon models
        x0 = (x - sqrt(1 - a) eps) / sqrt(a) (§2); v models x0 = sqrt(a) x - sqrt(1 - a) v (§9.4)."""
        if self.prediction_type == "v_prediction":
            return a**0.5 * x - (1 - a) ** 0.5 * out
        return (x - (1 - a) ** 0.5 * out) / a**0.5

    def predict_eps(self, x: Tensor, out: Tensor, a: float) -> Tensor:
        """The noise that x and the model output predict at alpha_bar a: eps itself, or sqrt(a) v + sqrt(1 - a) x
        for v models (§9.4)."""
        if self.prediction_type == "v_prediction":
            return a**0.5 * out + (1 - a) ** 0.5 * x
        return out

    def step(self, eps: Tensor, t: int | Tensor, x: Tensor) -> Tensor:
        """x_t -> x_{t - stride} with the model output `eps` (the noise, or v for a v model; float32 out, float64
        for float64 input)."""
        t = int(t)
        return self._move(x, eps, self.alpha_bar(t), self.alpha_bar(t - self.stride))

    def invert_step(self, eps: Tensor, t: int | Tensor, x: Tensor) -> Tensor:
        """x_{t - stride} -> x_t with the model output `eps` = eps(x, t) (or v(x, t) for a v model; float32 out,
        float64 for float64 input)."""
        t = int(t)
        return self._move(x, eps, self.alpha_bar(t - self.stride), self.alpha_bar(t))

    def __repr__(self) -> str:
        return f"DDIM(num_steps={self.num_steps}, {self.schedule})"
