"""DDIM schedule, step and inversion step against diffusers' DDIMScheduler and §2 written out here."""
import pytest
import torch

import sampling

diffusers = pytest.importorskip("diffusers")

SD_V1 = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
             set_alpha_to_one=True, steps_offset=1)
OTHER = dict(beta_start=0.0001, beta_end=0.02, beta_schedule="linear", clip_sample=False,
             set_alpha_to_one=False, steps_offset=0)


def reference(n: int, **cfg) -> "diffusers.DDIMScheduler":
    s = diffusers.DDIMScheduler(num_train_timesteps=1000, **cfg)
    s.set_timesteps(n)
    return s


def check_against(ours: sampling.DDIM, ref, n: int) -> None:
    assert torch.equal(ours.alphas_cumprod, ref.alphas_cumprod)
    assert torch.equal(ours.timesteps, ref.timesteps)
    g = torch.Generator().manual_seed(n)
    x, eps = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    for t in ours.timesteps.tolist():
        expect = ref.step(eps, t, x, eta=0.0).prev_sample
        torch.testing.assert_close(ours.step(eps, t, x), expect, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n", [1, 10, 20, 50, 999])
def test_sd_v1_default_matches_diffusers(n):
    ours = sampling.DDIM(n)
    check_against(ours, reference(n, **SD_V1), n)
    assert ours.final_alpha_cumprod == 1.0


def test_timesteps_50():
    assert sampling.DDIM(50).timesteps.tolist() == list(range(981, 0, -20))
    assert sampling.DDIM(50).timesteps.dtype == torch.long


@pytest.mark.parametrize("n", [10, 50, 1000])
def test_options_match_diffusers(n):
    # keyword options override the defaults; linear schedule, no alpha-to-one, offset 0 (1000 steps valid here)
    ours = sampling.DDIM(n, beta_start=0.0001, beta_end=0.02, beta_schedule="linear", set_alpha_to_one=False,
                         steps_offset=0)
    check_against(ours, reference(n, **OTHER), n)


def test_config_dict_sets_noise_schedule_only():
    # A real SD v1 scheduler_config says set_alpha_to_one false; the method keeps its own (§2).
    cfg = dict(OTHER, num_train_timesteps=1000, set_alpha_to_one=False, steps_offset=0, trained_betas=None,
               prediction_type="epsilon", timestep_spacing="leading")
    ours = sampling.DDIM(20, config=cfg)
    check_against(ours, reference(20, **dict(OTHER, set_alpha_to_one=True, steps_offset=1)), 20)
    # ... unless overridden by keyword
    ours = sampling.DDIM(20, config=cfg, set_alpha_to_one=False, steps_offset=0)
    check_against(ours, reference(20, **OTHER), 20)


def test_config_num_train_timesteps():
    ours = sampling.DDIM(10, config={"num_train_timesteps": 500})
    assert ours.timesteps.tolist() == list(range(451, 0, -50))
    assert len(ours.alphas_cumprod) == 500


def alpha_bar_spec(t: int) -> float:
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float32) ** 2
    return 1.0 if t < 0 else float(torch.cumprod(1 - betas, 0)[t])


@pytest.mark.parametrize("n", [10, 50])
def test_invert_step_spec_formula(n):
    ddim = sampling.DDIM(n)
    g = torch.Generator().manual_seed(1)
    x, eps = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 4, 8, 8, generator=g)
    for t in ddim.timesteps.flip(0).tolist():
        a, a_next = alpha_bar_spec(t - 1000 // n), alpha_bar_spec(t)
        x0 = (x - (1 - a) ** 0.5 * eps) / a**0.5
        expect = a_next**0.5 * x0 + (1 - a_next) ** 0.5 * eps
        torch.testing.assert_close(ddim.invert_step(eps, t, x), expect, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kw", [{}, dict(set_alpha_to_one=False, beta_schedule="linear", beta_end=0.02)])
def test_step_undoes_invert_step(kw):
    ddim = sampling.DDIM(50, **kw)
    g = torch.Generator().manual_seed(2)
    x, eps = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 4, 8, 8, generator=g)
    for t in ddim.timesteps.tolist():
        back = ddim.step(eps, t, ddim.invert_step(eps, t, x))
        torch.testing.assert_close(back, x, rtol=1e-5, atol=2e-5)


def test_update_is_float32_for_low_precision_inputs():
    ddim = sampling.DDIM(50)
    g = torch.Generator().manual_seed(3)
    x, eps = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 4, 8, 8, generator=g)
    out = ddim.step(eps.bfloat16(), 981, x)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ddim.step(eps.bfloat16().float(), 981, x))
    assert ddim.invert_step(eps.half(), 1, x.half()).dtype == torch.float32


@pytest.mark.parametrize("n", [0, -1, 1001])
def test_bad_num_steps(n):
    with pytest.raises(ValueError, match="num_steps"):
        sampling.DDIM(n)


def test_1000_steps_with_offset_is_rejected():
    # arange(1000)*1 + 1 would reach timestep 1000 (diffusers then fails with an IndexError mid-loop)
    with pytest.raises(ValueError, match="timestep 1000"):
        sampling.DDIM(1000)


@pytest.mark.parametrize("cfg, word", [
    ({"prediction_type": "sample"}, "prediction_type"),  # v_prediction is supported: tests/test_sd2.py
    ({"beta_schedule": "squaredcos_cap_v2"}, "beta_schedule"),
    ({"trained_betas": [0.1] * 1000}, "trained_betas"),
    ({"rescale_betas_zero_snr": True}, "rescale_betas_zero_snr"),
])
def test_unsupported_config(cfg, word):
    with pytest.raises(ValueError, match=word):
        sampling.DDIM(50, config=cfg)
