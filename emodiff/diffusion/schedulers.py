"""Sampling schedulers: `diffusers` DDPM (learned-range Σ), DDIM and DPM-Solver++ with our training betas."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from emodiff.diffusion.gaussian import make_betas
from emodiff.errors import EmodiffError

SAMPLERS = ("ddpm", "ddim", "dpm++")  # the one sampler vocabulary of the CLI, the app, the YAML configs and the pipeline


def make_scheduler(name: str, diffusion_config: Mapping[str, Any], prediction_type: str = "epsilon") -> SchedulerMixin:
    """A diffusers scheduler for sampler `name` with exactly the betas the model was trained on.

    `diffusion_config` is the training config's `diffusion` section (num_train_timesteps,
    beta_schedule). DDPM and DPM-Solver++ read the learned-range variance half of the UNet output;
    DDIM (deterministic, η = 0) uses ε only (see `scheduler_model_output`). Predicted frames stay in
    [−1, 1]: clip_sample for DDPM/DDIM, dynamic thresholding for DPM-Solver++. `prediction_type` is the
    UNet's ("v_prediction" for a distilled student or a v-trained denoiser, which sample with DDIM or DPM-Solver++).
    """
    betas = make_betas(diffusion_config["beta_schedule"], int(diffusion_config["num_train_timesteps"]))
    common = dict(num_train_timesteps=len(betas), trained_betas=betas.tolist(), prediction_type=prediction_type)
    if name == "ddpm" and prediction_type != "epsilon":
        raise EmodiffError("This denoiser predicts v, and emodiff's ddpm sampler is for ε-prediction; use ddim or dpm++.")
    if name == "ddpm":
        return DDPMScheduler(**common, variance_type="learned_range", clip_sample=True)
    if name == "ddim":
        return DDIMScheduler(**common, clip_sample=True, set_alpha_to_one=True, timestep_spacing="trailing")
    if name == "dpm++":
        return DPMSolverMultistepScheduler(**common, algorithm_type="dpmsolver++", solver_order=2,
                                           variance_type="learned_range", timestep_spacing="trailing",
                                           thresholding=True, sample_max_value=1.0)
    raise EmodiffError(f"Unknown sampler '{name}'; choose one of: {', '.join(SAMPLERS)}.")


def scheduler_model_output(scheduler: SchedulerMixin, model_output: torch.Tensor) -> torch.Tensor:
    """The part of the UNet's ε ⊕ v output that `scheduler.step` expects."""
    if scheduler.config.get("variance_type") == "learned_range":
        return model_output
    return model_output[:, : model_output.shape[1] // 2]
