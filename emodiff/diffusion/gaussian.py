"""Gaussian diffusion maths of EMOdiffhead §3.2.1 (eq. 1–10) and the training loss of eq. 16.

Follows Ho et al. (DDPM) and Nichol & Dhariwal (improved DDPM / ADM): ε-prediction (or v-prediction, Salimans &
Ho 2022, beyond the paper), learned-range
variance Σ = exp(v·log β_t + (1−v)·log β̃_t) (eq. 5, v mapped from the network's [−1, 1]), and the
hybrid loss L_simple + λ_vlb·L_vlb with a stop-gradient on the mean inside L_vlb. Schedule
arrays are kept in float64 and gathered per timestep.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from emodiff.errors import EmodiffError

BETA_SCHEDULES = ("linear", "cosine")


def make_betas(schedule: str, num_timesteps: int) -> np.ndarray:
    """β_1..β_T (eq. 1): DDPM's linear schedule (scaled to T) or improved DDPM's cosine schedule."""
    if schedule == "linear":
        scale = 1000 / num_timesteps
        return np.linspace(scale * 1e-4, scale * 0.02, num_timesteps, dtype=np.float64)
    if schedule == "cosine":
        def alpha_bar(s: float) -> float:
            return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2

        steps = np.arange(num_timesteps)
        return np.array([min(1 - alpha_bar((i + 1) / num_timesteps) / alpha_bar(i / num_timesteps), 0.999)
                         for i in steps], dtype=np.float64)
    raise EmodiffError(f"unknown beta_schedule {schedule!r}; choose one of {', '.join(BETA_SCHEDULES)}")


def config_betas(diffusion_config: Mapping[str, Any]) -> np.ndarray:
    """β_t of a training config's `diffusion` section (beta_schedule, num_train_timesteps)."""
    return make_betas(diffusion_config["beta_schedule"], int(diffusion_config["num_train_timesteps"]))


def normal_kl(mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor, logvar2: torch.Tensor) -> torch.Tensor:
    """KL(N(mean1, e^logvar1) ‖ N(mean2, e^logvar2)), elementwise, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))


def discretized_gaussian_log_likelihood(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """log p(x) of 8-bit images scaled to [−1, 1] under N(mean, e^{2·log_scale}) discretised into
    256 bins of width 2/255, the outer bins extending to ±∞ (the decoder L_0 of eq. 8)."""
    centered = x - mean
    inv_std = torch.exp(-log_scale)
    cdf_plus = standard_normal_cdf(inv_std * (centered + 1.0 / 255))
    cdf_minus = standard_normal_cdf(inv_std * (centered - 1.0 / 255))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_minus = torch.log((1.0 - cdf_minus).clamp(min=1e-12))
    log_delta = torch.log((cdf_plus - cdf_minus).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_minus, log_delta))


def masked_mse(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-sample mean squared error over the pixels where mask (B,1,H,W) is 1."""
    weight = mask.expand_as(a)
    return ((a - b) ** 2 * weight).flatten(1).sum(1) / weight.flatten(1).sum(1).clamp(min=1.0)


def motion_frames(diffusion: "GaussianDiffusion", motion: torch.Tensor, identity: torch.Tensor,
                  dropped: torch.Tensor | None = None, levels: torch.Tensor | None = None,
                  noise: torch.Tensor | None = None) -> torch.Tensor:
    """x^(i−2) ⊕ x^(i−1) (B,6,H,W) as the UNet gets them in training, distillation and sampling (docs/design.md §5.1,
    beyond the paper): the identity frame (B,3,H,W) in place of both where `dropped` (B,) is True, as for a video's
    first frame, then noised to `levels` (B,) with `noise` by q_sample (eq. 2) when levels are given."""
    if dropped is not None:
        motion = torch.where(dropped[:, None, None, None], identity.repeat(1, 2, 1, 1), motion)
    if levels is not None:
        motion = diffusion.q_sample(motion, levels, noise).to(motion.dtype)
    return motion


class GaussianDiffusion:
    """Forward process, posterior and hybrid loss for T timesteps t = 0..T−1 (eq. 1–10, 16)."""

    def __init__(self, betas: np.ndarray):
        self.betas = np.asarray(betas, dtype=np.float64)
        self.num_timesteps = len(self.betas)
        alphas = 1.0 - self.betas
        self.alphas_cumprod = np.cumprod(alphas)
        self.alphas_cumprod_prev = np.append(1.0, self.alphas_cumprod[:-1])
        self.sqrt_alphas_cumprod = np.sqrt(self.alphas_cumprod)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - self.alphas_cumprod)
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod - 1)
        # β̃_t = (1 − ᾱ_{t−1}) / (1 − ᾱ_t) · β_t; its log is clipped at t = 0, where β̃ = 0.
        self.posterior_variance = self.betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        self.posterior_log_variance_clipped = np.log(np.append(self.posterior_variance[1], self.posterior_variance[1:]))
        self.posterior_mean_coef1 = self.betas * np.sqrt(self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef2 = (1.0 - self.alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - self.alphas_cumprod)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "GaussianDiffusion":
        """From a config's `diffusion` section (num_train_timesteps, beta_schedule)."""
        return cls(config_betas(config))

    @staticmethod
    def _gather(values: np.ndarray, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        out = torch.as_tensor(values, device=t.device)[t].to(torch.float32)
        return out.reshape(-1, *([1] * (like.ndim - 1)))

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = √ᾱ_t·x_0 + √(1 − ᾱ_t)·ε (eq. 2)."""
        return self._gather(self.sqrt_alphas_cumprod, t, x0) * x0 + self._gather(self.sqrt_one_minus_alphas_cumprod, t, x0) * noise

    def q_posterior(self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and clipped log-variance of q(x_{t−1} | x_t, x_0)."""
        mean = self._gather(self.posterior_mean_coef1, t, x_t) * x0 + self._gather(self.posterior_mean_coef2, t, x_t) * x_t
        return mean, self._gather(self.posterior_log_variance_clipped, t, x_t).expand_as(x_t)

    def learned_range_log_variance(self, v: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """log Σ_θ = v'·log β_t + (1 − v')·log β̃_t with v' = (v + 1)/2 ∈ [0, 1] (eq. 5)."""
        frac = (v + 1) / 2
        return frac * self._gather(np.log(self.betas), t, v) + (1 - frac) * self._gather(self.posterior_log_variance_clipped, t, v)

    def predict_x0(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """x_0 from x_t and ε by inverting eq. 2."""
        return self._gather(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t - self._gather(self.sqrt_recipm1_alphas_cumprod, t, x_t) * eps

    def v_target(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """v = √ᾱ_t·ε − √(1 − ᾱ_t)·x_0 (Salimans & Ho 2022), the target of a v-prediction denoiser."""
        return self._gather(self.sqrt_alphas_cumprod, t, x0) * noise - self._gather(self.sqrt_one_minus_alphas_cumprod, t, x0) * x0

    def eps_from_v(self, x_t: torch.Tensor, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """ε = √ᾱ_t·v + √(1 − ᾱ_t)·x_t, the ε a v-prediction implies."""
        return self._gather(self.sqrt_alphas_cumprod, t, x_t) * v + self._gather(self.sqrt_one_minus_alphas_cumprod, t, x_t) * x_t

    def p_mean_log_variance(self, model_output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor,
                            clip_x0: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """μ_θ (eq. 4, via the posterior mean of the predicted x_0) and log Σ_θ (eq. 5) from ε ⊕ v."""
        eps, v = model_output.chunk(2, dim=1)
        x0 = self.predict_x0(x_t, t, eps)
        if clip_x0:
            x0 = x0.clamp(-1, 1)
        mean, _ = self.q_posterior(x0, x_t, t)
        return mean, self.learned_range_log_variance(v, t)

    def vlb_terms(self, model_output: torch.Tensor, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Per-sample L_{t} in bits per dimension: the KL of eq. 9 for t > 0, the decoder NLL of eq. 8 at t = 0."""
        true_mean, true_log_var = self.q_posterior(x0, x_t, t)
        mean, log_var = self.p_mean_log_variance(model_output, x_t, t)
        kl = normal_kl(true_mean, true_log_var, mean, log_var).flatten(1).mean(1) / math.log(2.0)
        nll = -discretized_gaussian_log_likelihood(x0, mean, 0.5 * log_var).flatten(1).mean(1) / math.log(2.0)
        return torch.where(t == 0, nll, kl)

    def training_losses(
        self,
        model_output: torch.Tensor,
        x0: torch.Tensor,
        x_t: torch.Tensor,
        t: torch.Tensor,
        noise: torch.Tensor,
        lambda_vlb: float = 0.001,
        mouth_mask: torch.Tensor | None = None,
        eye_mask: torch.Tensor | None = None,
        lambda_lip: float = 0.0,
        lambda_eye: float = 0.0,
        min_snr_gamma: float | None = None,
        prediction_type: str = "epsilon",
    ) -> dict[str, torch.Tensor]:
        """Per-sample terms of eq. 16: L_simple + λ_vlb·L_vlb + λ_lip·L_lip + λ_eye·L_eye.

        L_vlb is estimated from the sampled t as T·L_t, with the ε half of the output detached so
        that it trains only the variance (improved DDPM's hybrid objective; λ_vlb = 0.001 at T = 1000
        matches ADM). L_lip and L_eye are the ε-MSE inside the mouth and eye masks. With `min_snr_gamma` γ the
        ε terms are weighted by min(SNR_t, γ)/SNR_t, SNR_t = ᾱ_t/(1 − ᾱ_t) (Min-SNR-γ, Hang et al. 2023, eq. 8 for
        ε-prediction), which stops the nearly clean steps from dominating the gradient.

        With `prediction_type="v_prediction"` the first half of the output is v and every MSE term compares it
        with `v_target` (Min-SNR weight min(SNR_t, γ)/(SNR_t + 1), Hang et al. 2023); L_vlb reads the ε it implies.
        At the noisiest steps an ε error is multiplied by 1/√ᾱ_t in the predicted frame, a v error is not, which
        keeps a denoiser trained briefly from painting noise and colour shifts into frames sampled from x_T.
        """
        prediction, v = model_output.chunk(2, dim=1)
        if prediction_type == "epsilon":
            target, eps = noise, prediction
        elif prediction_type == "v_prediction":
            target, eps = self.v_target(x0, t, noise), self.eps_from_v(x_t, t, prediction)
        else:
            raise EmodiffError(f"Unknown prediction_type {prediction_type!r}; choose epsilon or v_prediction.")
        weight = torch.ones_like(t, dtype=prediction.dtype)
        if min_snr_gamma is not None:
            snr = self._gather(self.alphas_cumprod / (1.0 - self.alphas_cumprod), t, t)
            weight = snr.clamp(max=min_snr_gamma) / (snr + (prediction_type == "v_prediction"))
        losses = {"simple": weight * (target - prediction).square().flatten(1).mean(1)}
        frozen = torch.cat([eps.detach(), v], dim=1)
        losses["vlb"] = self.num_timesteps * self.vlb_terms(frozen, x0, x_t, t)
        loss = losses["simple"] + lambda_vlb * losses["vlb"]
        if mouth_mask is not None:
            losses["lip"] = weight * masked_mse(target, prediction, mouth_mask)
            loss = loss + lambda_lip * losses["lip"]
        if eye_mask is not None:
            losses["eye"] = weight * masked_mse(target, prediction, eye_mask)
            loss = loss + lambda_eye * losses["eye"]
        losses["loss"] = loss
        return losses
