"""The reverse process for one batch of frames (eq. 3) with a `diffusers` scheduler and classifier-free guidance over
the audio and expression conditions (docs/design.md §5.1): the one denoising loop of sampling, distillation and the
training's validation strips."""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from emodiff.diffusion.schedulers import scheduler_model_output

GuidanceRow = tuple[bool, bool]  # (audio kept, expression kept) of one batch row of the UNet call
UNGUIDED: tuple[GuidanceRow, ...] = ((True, True),)


def guide(out: torch.Tensor, rows: Sequence[GuidanceRow], scales: tuple[float, float]) -> torch.Tensor:
    """ε = ε(∅,∅) + s_a·(ε(a,∅) − ε(∅,∅)) + s_e·(ε(a,e) − ε(a,∅)) from the UNet output of the guidance `rows` stacked
    along the batch; the variance half comes from ε(a,e)."""
    if len(rows) == 1:
        return out
    s_a, s_e = scales
    parts = dict(zip(rows, out.chunk(len(rows))))
    full = parts[(True, True)]
    eps = full[:, :3]
    if s_e != 1.0:
        eps = eps + (s_e - 1.0) * (full[:, :3] - parts[(True, False)][:, :3])
    if s_a != 1.0:
        eps = eps + (s_a - 1.0) * (parts[(True, False)][:, :3] - parts[(False, False)][:, :3])
    return torch.cat([eps, full[:, 3:]], 1)


@torch.no_grad()
def denoise(unet: Callable[..., torch.Tensor], scheduler: SchedulerMixin, x: torch.Tensor,
            conditions: dict[str, torch.Tensor], reference_features: Sequence[torch.Tensor], steps: int,
            rows: Sequence[GuidanceRow] = UNGUIDED, scales: tuple[float, float] = (1.0, 1.0),
            generator: torch.Generator | list[torch.Generator] | None = None) -> torch.Tensor:
    """x_T (B,3,H,W) → x_0 in [−1, 1] with the scheduler's `steps` steps.

    `conditions` holds the UNet inputs of the frames (identity, motion, audio and expression windows, optionally
    motion_noise, emotion, intensity) in the UNet's dtype. Every step is one batched UNet call over the guidance
    `rows`, combined by `guide` with the scales (s_a, s_e).
    """
    def per_row(value: torch.Tensor) -> torch.Tensor:  # one copy of a batch per guidance row
        return value if len(rows) == 1 else value.repeat(len(rows), *[1] * (value.dim() - 1))

    inputs: dict[str, object] = {key: per_row(value) for key, value in conditions.items()}
    inputs["reference_features"] = [per_row(f) for f in reference_features]
    keep = torch.tensor(list(rows), device=x.device).repeat_interleave(len(x), 0)
    inputs.update(audio_keep=keep[:, 0], expression_keep=keep[:, 1])
    dtype = conditions["identity"].dtype
    x = x * scheduler.init_noise_sigma
    scheduler.set_timesteps(steps, device=x.device)  # also resets multistep state between frames
    for t in scheduler.timesteps:
        out = unet(per_row(scheduler.scale_model_input(x, t).to(dtype)), t, **inputs).float()
        x = scheduler.step(scheduler_model_output(scheduler, guide(out, rows, scales)), t, x,
                           generator=generator).prev_sample
    return x.clamp(-1, 1)
