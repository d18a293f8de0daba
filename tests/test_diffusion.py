"""Diffusion maths against closed forms (eq. 1–10, 16) and the diffusers scheduler mapping."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.distributions import Normal, kl_divergence

from emodiff.diffusion.gaussian import (GaussianDiffusion, config_betas, discretized_gaussian_log_likelihood,
                                        make_betas,
                                        normal_kl)
from emodiff.diffusion.sampling import denoise
from emodiff.diffusion.schedulers import SAMPLERS, make_scheduler
from emodiff.errors import EmodiffError

CONFIG = {"num_train_timesteps": 1000, "beta_schedule": "linear"}


def test_beta_schedules():
    linear = make_betas("linear", 1000)
    assert linear[0] == pytest.approx(1e-4) and linear[-1] == pytest.approx(0.02)
    cosine = make_betas("cosine", 1000)
    f = lambda s: math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    alpha_bar = np.cumprod(1 - cosine)
    np.testing.assert_allclose(alpha_bar[:900], [f((i + 1) / 1000) / f(0) for i in range(900)], rtol=1e-6)
    with pytest.raises(EmodiffError, match="cosine"):
        make_betas("quadratic", 10)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_posterior_matches_bayes_on_a_1d_gaussian(schedule):
    """q(x_{t−1} | x_t, x_0) ∝ q(x_t | x_{t−1})·q(x_{t−1} | x_0), computed here from eq. 1–2 directly."""
    betas = make_betas(schedule, 1000)
    diffusion = GaussianDiffusion(betas)
    alphas = 1 - betas
    abar = np.cumprod(alphas)
    x0, xt = 0.37, -0.81
    for t in (1, 10, 250, 999):
        prior_mean, prior_var = math.sqrt(abar[t - 1]) * x0, 1 - abar[t - 1]       # q(x_{t−1} | x_0)
        lik_scale, lik_var = math.sqrt(alphas[t]), betas[t]                         # q(x_t | x_{t−1})
        var = 1 / (1 / prior_var + lik_scale**2 / lik_var)
        mean = var * (prior_mean / prior_var + lik_scale * xt / lik_var)
        m, log_var = diffusion.q_posterior(torch.tensor([[x0]]), torch.tensor([[xt]]), torch.tensor([t]))
        assert m.item() == pytest.approx(mean, rel=1e-5, abs=1e-6)
        assert math.exp(log_var.item()) == pytest.approx(var, rel=1e-5)


def test_model_mean_is_eq4():
    diffusion = GaussianDiffusion(make_betas("linear", 1000))
    x_t, eps = torch.randn(4, 3, 2, 2), torch.randn(4, 3, 2, 2)
    t = torch.tensor([1, 5, 500, 999])
    mean, _ = diffusion.p_mean_log_variance(torch.cat([eps, torch.zeros_like(eps)], 1), x_t, t)
    b = torch.tensor(diffusion.betas, dtype=torch.float32)[t].view(-1, 1, 1, 1)
    abar = torch.tensor(diffusion.alphas_cumprod, dtype=torch.float32)[t].view(-1, 1, 1, 1)
    expected = (x_t - b / torch.sqrt(1 - abar) * eps) / torch.sqrt(1 - b)
    torch.testing.assert_close(mean, expected, rtol=1e-4, atol=1e-4)


def test_normal_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    m1, m2, lv1, lv2 = (torch.randn(100, generator=g) for _ in range(4))
    expected = kl_divergence(Normal(m1, torch.exp(0.5 * lv1)), Normal(m2, torch.exp(0.5 * lv2)))
    torch.testing.assert_close(normal_kl(m1, lv1, m2, lv2), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mean,log_scale", [(0.0, -2.0), (0.93, -4.0), (-1.2, 0.5), (0.1, -7.0)])
def test_discretized_nll_sums_to_one_over_256_bins(mean, log_scale):
    bins = torch.linspace(-1, 1, 256, dtype=torch.float64)
    log_p = discretized_gaussian_log_likelihood(bins, torch.full_like(bins, mean), torch.full_like(bins, log_scale))
    assert log_p.exp().sum().item() == pytest.approx(1.0, abs=1e-6)


def test_learned_range_endpoints():
    diffusion = GaussianDiffusion(make_betas("linear", 1000))
    t = torch.tensor([1, 100, 999])
    shape = (3, 1, 1, 1)
    beta = torch.tensor(diffusion.betas, dtype=torch.float32)[t].view(shape)
    beta_tilde = torch.tensor(diffusion.posterior_variance, dtype=torch.float32)[t].view(shape)
    torch.testing.assert_close(diffusion.learned_range_log_variance(torch.ones(shape), t), beta.log())
    torch.testing.assert_close(diffusion.learned_range_log_variance(-torch.ones(shape), t), beta_tilde.log())
    torch.testing.assert_close(diffusion.learned_range_log_variance(torch.zeros(shape), t),
                               0.5 * (beta.log() + beta_tilde.log()))


def test_hybrid_loss_terms():
    diffusion = GaussianDiffusion(make_betas("linear", 1000))
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(4, 3, 8, 8, generator=g) * 2 - 1
    noise = torch.randn(4, 3, 8, 8, generator=g)
    t = torch.tensor([0, 3, 400, 999])
    x_t = diffusion.q_sample(x0, t, noise)
    # The true ε with Σ = β̃ (v = −1) makes every KL term vanish (t > 0).
    perfect = torch.cat([noise, -torch.ones_like(noise)], 1)
    terms = diffusion.vlb_terms(perfect, x0, x_t, t)
    assert terms[1:].abs().max() < 1e-4 and terms[0] > 0  # t = 0 is the decoder NLL, never zero
    # L_vlb trains only the variance: no gradient reaches the ε half through it.
    output = torch.randn(4, 6, 8, 8, generator=g, requires_grad=True)
    mouth = torch.zeros(4, 1, 8, 8)
    mouth[..., 5:, 2:6] = 1
    losses = diffusion.training_losses(output, x0, x_t, t, noise, lambda_vlb=1.0, mouth_mask=mouth,
                                       lambda_lip=0.0)
    losses["vlb"].sum().backward()
    assert output.grad[:, :3].abs().max() == 0 and output.grad[:, 3:].abs().max() > 0
    # L_lip is the ε-MSE inside the mouth mask only.
    changed = output.detach().clone()
    changed[:, :3, :5] += 3.0  # outside the mask
    again = diffusion.training_losses(changed, x0, x_t, t, noise, mouth_mask=mouth)
    torch.testing.assert_close(again["lip"], losses["lip"].detach())
    inside = ((noise - output[:, :3].detach())[..., 5:, 2:6] ** 2).flatten(1).mean(1)
    torch.testing.assert_close(losses["lip"].detach(), inside)


@pytest.mark.parametrize("name", SAMPLERS)
def test_schedulers_share_training_betas_and_recover_a_point_mass(name):
    """With the Bayes-optimal ε for data concentrated at x*, every sampler must land on x*."""
    scheduler = make_scheduler(name, config_betas(CONFIG))
    diffusion = GaussianDiffusion.from_config(CONFIG)
    np.testing.assert_allclose(scheduler.betas.numpy(), diffusion.betas, rtol=1e-6)
    target = torch.linspace(-0.8, 0.8, 3 * 4 * 4).reshape(1, 3, 4, 4)

    def oracle(x, t, **_):
        t = torch.as_tensor(t).reshape(1)
        abar = torch.tensor(diffusion.alphas_cumprod, dtype=torch.float32)[t].view(-1, 1, 1, 1)
        eps = (x - abar.sqrt() * target) / (1 - abar).sqrt()
        return torch.cat([eps, torch.zeros_like(eps)], 1)

    generator = torch.Generator().manual_seed(0)
    empty = torch.zeros(1, 3, 4, 4)
    conditions = {"identity": empty, "motion": empty.repeat(1, 2, 1, 1), "audio": torch.zeros(1, 5, 2),
                  "expression": torch.zeros(1, 5, 2)}
    out = denoise(oracle, scheduler, torch.randn(empty.shape, generator=generator), conditions, [],
                  20 if name != "ddpm" else 100, generator=generator)
    torch.testing.assert_close(out, target, atol=2e-2, rtol=0)


def test_ddpm_learned_range_variance_matches_ours():
    scheduler = make_scheduler("ddpm", config_betas(CONFIG))
    scheduler.set_timesteps(1000)
    diffusion = GaussianDiffusion.from_config(CONFIG)
    v = torch.tensor([[-0.6]])
    for t in (1, 10, 500, 999):
        ours = diffusion.learned_range_log_variance(v, torch.tensor([t]))
        theirs = scheduler._get_variance(t, predicted_variance=v)
        torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=1e-4)


def test_unknown_sampler_is_a_clear_error():
    with pytest.raises(EmodiffError, match="ddim"):
        make_scheduler("euler", config_betas(CONFIG))
