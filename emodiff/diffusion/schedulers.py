"""Sampling schedulers: `diffusers` DDPM (learned-range Σ), DDIM and DPM-Solver++ with our training betas.

A pipeline folder holds its default scheduler as a component (`scheduler/scheduler_config.json`, diffusers' own
format, with the trained β_t); the other kinds are made from its betas (docs/design.md §5.4)."""

from __future__ import annotations

import numpy as np
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from emodiff.errors import EmodiffError

# the one sampler vocabulary of the CLI, the app, the YAML configs and the pipeline, and the scheduler class of each
SCHEDULER_CLASSES = {"ddpm": DDPMScheduler, "ddim": DDIMScheduler, "dpm++": DPMSolverMultistepScheduler}
SAMPLERS = tuple(SCHEDULER_CLASSES)


def scheduler_betas(scheduler: SchedulerMixin) -> np.ndarray:
    """The β_t a scheduler was made with, exactly: its `trained_betas` (float64, as `make_scheduler` gives them)."""
    betas = scheduler.config.get("trained_betas")
    return np.asarray(scheduler.betas.tolist() if betas is None else betas, dtype=np.float64)


def sampler_name(scheduler: SchedulerMixin) -> str:
    """The SAMPLERS name of a scheduler's kind."""
    for name, cls in SCHEDULER_CLASSES.items():
        if type(scheduler) is cls:
            return name
    raise EmodiffError(f"{type(scheduler).__name__} is not one of emodiff's samplers ({', '.join(SAMPLERS)}).")


def make_scheduler(name: str, betas: np.ndarray, prediction_type: str = "epsilon") -> SchedulerMixin:
    """A diffusers scheduler for sampler `name` with exactly the betas the model was trained on (`config_betas`,
    `scheduler_betas`). DDPM and DPM-Solver++ read the learned-range variance half of the UNet output;
    DDIM (deterministic, η = 0) uses ε only (see `scheduler_model_output`). Predicted frames stay in
    [−1, 1]: clip_sample for DDPM/DDIM, dynamic thresholding for DPM-Solver++. `prediction_type` is the
    UNet's ("v_prediction" for a distilled student or a v-trained denoiser, which sample with DDIM or DPM-Solver++).
    """
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
