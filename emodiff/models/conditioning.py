"""Condition encoders of the denoiser: timestep, audio window and expression window (eq. 12–13).

Each encoder maps its input to one embedding (B, C); every conditional residual block turns it
into a FiLM pair (scale, shift) with its own SiLU + Linear (see `emodiff.models.unet.NestedFiLM`).
The expression encoder is chosen by the UNet config key `expression_encoder` from
`EXPRESSION_ENCODERS`. Each is built as `cls(expression_dim=, window=, dim=, num_emotions=)` and
called as `encoder(expression (B,2n+1,D), emotion (B,) or None, intensity (B,) or None) → (B, dim)`,
so the intensity-control variants of papers/framewise_emotion_intensity.txt (Table 3) plug in
without touching the UNet.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from emodiff.errors import EmodiffError


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding (B,) → (B, dim) of (possibly fractional) timesteps, as in DDPM/ADM."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=timesteps.device, dtype=torch.float32) / half)
    args = timesteps.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return nn.functional.pad(emb, (0, dim % 2))


class TimestepEncoder(nn.Module):
    """t' of eq. 12: sinusoidal embedding followed by a two-layer MLP."""

    def __init__(self, frequency_dim: int, dim: int):
        super().__init__()
        self.frequency_dim = frequency_dim
        self.mlp = nn.Sequential(nn.Linear(frequency_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, timesteps: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_embedding(timesteps, self.frequency_dim))


class WindowEncoder(nn.Module):
    """Embedding of a window of per-frame features {x^(i−n)', …, x^(i+n)'} (eq. 12–13, windowed).

    Each frame's feature is embedded by a shared linear layer, the 2n+1 embeddings are
    concatenated and a small MLP maps them to one (B, dim) embedding.
    """

    def __init__(self, feature_dim: int, window: int, dim: int, frame_dim: int | None = None):
        super().__init__()
        frame_dim = frame_dim or dim // 2
        self.frame_embedding = nn.Linear(feature_dim, frame_dim)
        self.mlp = nn.Sequential(nn.SiLU(), nn.Linear((2 * window + 1) * frame_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features (B, 2n+1, F) → (B, dim)."""
        return self.mlp(self.frame_embedding(features).flatten(1))


class InterpolationExpressionEncoder(WindowEncoder):
    """EMOdiffhead's expression condition: the window of expression vectors e^(i−n..i+n) (eq. 13).

    Emotion and intensity enter only through the expression vectors themselves (eq. 14–15).
    """

    def __init__(self, expression_dim: int, window: int, dim: int, num_emotions: int):
        super().__init__(expression_dim, window, dim)

    def forward(self, expression: torch.Tensor, emotion: torch.Tensor | None = None,
                intensity: torch.Tensor | None = None) -> torch.Tensor:
        return super().forward(expression)


EXPRESSION_ENCODERS: dict[str, type[nn.Module]] = {
    "interpolation": InterpolationExpressionEncoder,
}


def build_expression_encoder(name: str, expression_dim: int, window: int, dim: int, num_emotions: int) -> nn.Module:
    """The expression encoder registered as `name` (UNet config key `expression_encoder`)."""
    if name not in EXPRESSION_ENCODERS:
        raise EmodiffError(f"unknown expression_encoder {name!r}; choose one of {', '.join(EXPRESSION_ENCODERS)}")
    return EXPRESSION_ENCODERS[name](expression_dim=expression_dim, window=window, dim=dim, num_emotions=num_emotions)
