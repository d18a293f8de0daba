"""Reverse process for one batch of frames (eq. 3) with a `diffusers` scheduler."""

from __future__ import annotations

from typing import Sequence

import torch
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from emodiff.diffusion.schedulers import scheduler_model_output
from emodiff.models.unet import DenoisingUNet


@torch.no_grad()
def denoise_frames(
    unet: DenoisingUNet,
    scheduler: SchedulerMixin,
    identity: torch.Tensor,
    motion: torch.Tensor,
    audio: torch.Tensor,
    expression: torch.Tensor,
    reference_features: Sequence[torch.Tensor],
    num_inference_steps: int,
    generator: torch.Generator | None = None,
    emotion: torch.Tensor | None = None,
    intensity: torch.Tensor | None = None,
) -> torch.Tensor:
    """x_T ~ N(0, I) → x_0 (B,3,H,W) in [−1, 1] for the given conditions (ReferenceNet features computed once)."""
    x = torch.randn(identity.shape, generator=generator, device=identity.device, dtype=identity.dtype)
    x = x * scheduler.init_noise_sigma
    scheduler.set_timesteps(num_inference_steps, device=identity.device)
    for t in scheduler.timesteps:
        out = unet(scheduler.scale_model_input(x, t), t, identity=identity, motion=motion, audio=audio,
                   expression=expression, reference_features=reference_features, emotion=emotion,
                   intensity=intensity)
        x = scheduler.step(scheduler_model_output(scheduler, out), t, x, generator=generator).prev_sample
    return x.clamp(-1, 1)
