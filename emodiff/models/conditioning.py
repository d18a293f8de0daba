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

    Each frame's feature is standardised, (x − μ)/σ per dimension, with the training data's statistics
    (buffers saved with the weights, set by `set_statistics` before training), embedded by a shared
    linear layer; the 2n+1 embeddings are concatenated and a small MLP maps them to one (B, dim)
    embedding. Without the standardisation, raw log-mel energies (about −20 … 5) drive the first layer
    into saturation and small expression coefficients barely move it, and the encoder collapses to a
    constant that the denoiser learns to ignore.
    """

    def __init__(self, feature_dim: int, window: int, dim: int, frame_dim: int | None = None):
        super().__init__()
        frame_dim = frame_dim or dim // 2
        self.register_buffer("feature_mean", torch.zeros(feature_dim))
        self.register_buffer("feature_std", torch.ones(feature_dim))
        self.frame_embedding = nn.Linear(feature_dim, frame_dim)
        self.mlp = nn.Sequential(nn.SiLU(), nn.Linear((2 * window + 1) * frame_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    @torch.no_grad()
    def set_statistics(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Per-dimension μ and σ of the features (F,), e.g. from `FrameDataset.feature_statistics`."""
        self.feature_mean.copy_(torch.as_tensor(mean))
        self.feature_std.copy_(torch.as_tensor(std))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features (B, 2n+1, F) → (B, dim)."""
        standardised = (features - self.feature_mean) / self.feature_std
        return self.mlp(self.frame_embedding(standardised).flatten(1))


class InterpolationExpressionEncoder(WindowEncoder):
    """EMOdiffhead's expression condition: the window of expression vectors e^(i−n..i+n) (eq. 13).

    Emotion and intensity enter only through the expression vectors themselves (eq. 14–15).
    """

    def __init__(self, expression_dim: int, window: int, dim: int, num_emotions: int):
        super().__init__(expression_dim, window, dim)

    def forward(self, expression: torch.Tensor, emotion: torch.Tensor | None = None,
                intensity: torch.Tensor | None = None) -> torch.Tensor:
        return super().forward(expression)


class EmotionIntensityEncoder(nn.Module):
    """Base of the intensity-control variants of papers/framewise_emotion_intensity.txt Table 3: the
    condition is an emotion label (B,) and an intensity (B,) in [0, 1] instead of expression vectors.

    Emotions are learned vectors (the paper's CLIP text embeddings are not available offline); the
    label −1 (unlabelled clips) has its own learned vector. The expression window is ignored.
    """

    def __init__(self, num_emotions: int, emotion_dim: int):
        super().__init__()
        self.num_emotions = num_emotions
        self.emotion = nn.Embedding(num_emotions + 1, emotion_dim)

    def emotion_vectors(self, emotion: torch.Tensor | None, intensity: torch.Tensor | None) -> torch.Tensor:
        if emotion is None or intensity is None:
            raise EmodiffError(
                f"the '{self.name}' expression encoder needs an emotion label and an intensity per sample.")
        return self.emotion(torch.where(emotion < 0, self.num_emotions, emotion))


class RenormExpressionEncoder(EmotionIntensityEncoder):
    """Re-normalisation (framewise paper §3.2.1): an adaptation network M maps the emotion to a latent
    whose direction is the emotion and whose norm is the intensity, t(k) = k·max_norm; neutral is
    not re-scaled but pulled to the origin by L_norm = ‖M(f_neutral)‖ (eq. 2; see `norm_loss`).
    max_norm = √dim gives a per-coordinate RMS of 1 at full intensity.
    """

    name = "renorm"

    def __init__(self, expression_dim: int, window: int, dim: int, num_emotions: int, neutral: int = 0):
        super().__init__(num_emotions, dim)
        self.neutral = neutral
        self.max_norm = math.sqrt(dim)
        self.adapt = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim))

    def forward(self, expression: torch.Tensor, emotion: torch.Tensor | None = None,
                intensity: torch.Tensor | None = None) -> torch.Tensor:
        latent = self.adapt(self.emotion_vectors(emotion, intensity))
        rescaled = nn.functional.normalize(latent, dim=-1) * (intensity.to(latent.dtype) * self.max_norm)[:, None]
        return torch.where((emotion == self.neutral)[:, None], latent, rescaled)

    def norm_loss(self, emotion: torch.Tensor) -> torch.Tensor:
        """L_norm: the batch mean of ‖M(f_y)‖ over the samples whose label y is neutral (0 for the others).
        Denoiser training adds λ_norm·L_norm (`diffusion.lambda_norm`, the paper's 0.1) to its loss."""
        neutral = (emotion == self.neutral).to(self.emotion.weight.dtype)
        latent = self.adapt(self.emotion.weight[self.neutral])
        return latent.norm() * neutral.mean()


class ConcatExpressionEncoder(EmotionIntensityEncoder):
    """Concatenation (framewise paper Table 3, SPACE): emotion embedding (dim − 1) ⊕ intensity scalar."""

    name = "concat"

    def __init__(self, expression_dim: int, window: int, dim: int, num_emotions: int):
        super().__init__(num_emotions, dim - 1)

    def forward(self, expression: torch.Tensor, emotion: torch.Tensor | None = None,
                intensity: torch.Tensor | None = None) -> torch.Tensor:
        vectors = self.emotion_vectors(emotion, intensity)
        return torch.cat([vectors, intensity.to(vectors.dtype)[:, None]], dim=-1)


class ScalingExpressionEncoder(EmotionIntensityEncoder):
    """Scaling (framewise paper Table 3, MM-ESL): emotion embedding × intensity scalar."""

    name = "scaling"

    def __init__(self, expression_dim: int, window: int, dim: int, num_emotions: int):
        super().__init__(num_emotions, dim)

    def forward(self, expression: torch.Tensor, emotion: torch.Tensor | None = None,
                intensity: torch.Tensor | None = None) -> torch.Tensor:
        vectors = self.emotion_vectors(emotion, intensity)
        return vectors * intensity.to(vectors.dtype)[:, None]


EXPRESSION_ENCODERS: dict[str, type[nn.Module]] = {
    "interpolation": InterpolationExpressionEncoder,
    "renorm": RenormExpressionEncoder,
    "concat": ConcatExpressionEncoder,
    "scaling": ScalingExpressionEncoder,
}


def expression_encoder_class(name: str) -> type[nn.Module]:
    """The expression encoder class registered as `name` (UNet config key `expression_encoder`)."""
    if name not in EXPRESSION_ENCODERS:
        raise EmodiffError(f"unknown expression_encoder {name!r}; choose one of {', '.join(EXPRESSION_ENCODERS)}")
    return EXPRESSION_ENCODERS[name]


def uses_intensity(name: str) -> bool:
    """Whether the expression encoder registered as `name` takes an emotion label and an intensity k."""
    return issubclass(expression_encoder_class(name), EmotionIntensityEncoder)


def build_expression_encoder(name: str, expression_dim: int, window: int, dim: int, num_emotions: int) -> nn.Module:
    """The expression encoder registered as `name`."""
    return expression_encoder_class(name)(expression_dim=expression_dim, window=window, dim=dim, num_emotions=num_emotions)
