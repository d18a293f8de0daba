"""Expression generator and its discriminators (EMOdiffhead §3.3, eq. 17–19).

- `ExpressionGenerator`: an LSTM with ê^(i) = G(ê^(i−1), y, z^(i)), started from the neutral origin
  ê^(0) = 0, with fresh noise z^(i) every frame.
- `GlobalDiscriminator` D_g: a temporal convolutional network (dilated causal residual blocks) over
  the whole sequence — or plain convolutions for the paper's "w/o TCN" ablation — pooled over time,
  with a real/fake logit conditioned on y (projection) and emotion logits (it also predicts y).
- `LocalDiscriminator` D_l: an MLP on each frame ê^(i) with the emotion embedding, one logit per frame.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config

from emodiff.data.labels import EMOTIONS

TEMPORAL_KINDS = ("tcn", "conv")


class ExpressionGenerator(ModelMixin, ConfigMixin):
    """Autoregressive LSTM generator of expression sequences for an emotion (§3.3.1)."""

    @register_to_config
    def __init__(self, expression_dim: int = 50, n_emotions: int = len(EMOTIONS), emotion_dim: int = 16,
                 noise_dim: int = 16, hidden: int = 128, n_layers: int = 1):
        super().__init__()
        self.emotion = nn.Embedding(n_emotions, emotion_dim)
        self.lstm = nn.LSTM(expression_dim + emotion_dim + noise_dim, hidden, n_layers, batch_first=True)
        self.out = nn.Linear(hidden, expression_dim)

    def sample_noise(self, batch: int, n_frames: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """z (batch, n_frames, noise_dim) ~ N(0, I); share it across emotions to get matching e_n and e_y."""
        z = torch.randn(batch, n_frames, self.config.noise_dim, generator=generator)
        return z.to(self.device, self.dtype)

    @torch.no_grad()
    def generate(self, emotion: torch.Tensor, n_frames: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Sampled expression sequences (B, n_frames, D) for emotion indices (B,) (inference, §3.4)."""
        return self(emotion.to(self.device), self.sample_noise(len(emotion), n_frames, generator))

    def forward(self, emotion: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Expression sequences (B, T, D) for emotion indices (B,) and noise (B, T, noise_dim)."""
        y = self.emotion(emotion)
        previous = noise.new_zeros(noise.shape[0], self.config.expression_dim)
        state = None
        frames = []
        for i in range(noise.shape[1]):
            h, state = self.lstm(torch.cat([previous, y, noise[:, i]], dim=-1)[:, None], state)
            previous = self.out(h[:, 0])
            frames.append(previous)
        return torch.stack(frames, dim=1)


class TemporalBlock(nn.Module):
    """A TCN residual block: two dilated causal convolutions with LeakyReLU, plus the input."""

    def __init__(self, channels: int, kernel_size: int, dilation: int):
        super().__init__()
        self.pad = (kernel_size - 1) * dilation
        self.conv1 = nn.Conv1d(channels, channels, kernel_size, dilation=dilation)
        self.conv2 = nn.Conv1d(channels, channels, kernel_size, dilation=dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.leaky_relu(self.conv1(F.pad(x, (self.pad, 0))), 0.2)
        h = F.leaky_relu(self.conv2(F.pad(h, (self.pad, 0))), 0.2)
        return x + h


class GlobalDiscriminator(ModelMixin, ConfigMixin):
    """D_g (§3.3.2): real/fake of a whole sequence given y, and a prediction of y.

    `temporal="tcn"`: residual blocks with dilations 1, 2, 4, …; `"conv"`: the same number of plain
    (undilated, non-residual) convolution pairs — the paper's "w/o TCN" ablation.
    """

    @register_to_config
    def __init__(self, expression_dim: int = 50, n_emotions: int = len(EMOTIONS), temporal: str = "tcn",
                 hidden: int = 128, n_blocks: int = 4, kernel_size: int = 3):
        super().__init__()
        if temporal not in TEMPORAL_KINDS:
            raise ValueError(f"temporal must be one of {TEMPORAL_KINDS}, not {temporal!r}")
        self.inp = nn.Conv1d(expression_dim, hidden, 1)
        if temporal == "tcn":
            self.body = nn.Sequential(*(TemporalBlock(hidden, kernel_size, 2 ** b) for b in range(n_blocks)))
        else:
            layers = []
            for _ in range(2 * n_blocks):
                layers += [nn.Conv1d(hidden, hidden, kernel_size, padding=kernel_size // 2), nn.LeakyReLU(0.2)]
            self.body = nn.Sequential(*layers)
        self.real = nn.Linear(hidden, 1)
        self.projection = nn.Embedding(n_emotions, hidden)
        self.classify = nn.Linear(hidden, n_emotions)

    def forward(self, expression: torch.Tensor, emotion: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(real/fake logits (B,), emotion logits (B, n_emotions)) for sequences (B, T, D) and labels (B,)."""
        h = self.body(self.inp(expression.transpose(1, 2))).mean(dim=2)
        logit = self.real(h)[:, 0] + (self.projection(emotion) * h).sum(dim=1)
        return logit, self.classify(h)


class LocalDiscriminator(ModelMixin, ConfigMixin):
    """D_l (§3.3.2): an MLP judging each frame ê^(i) given y; logits (B, T)."""

    @register_to_config
    def __init__(self, expression_dim: int = 50, n_emotions: int = len(EMOTIONS), emotion_dim: int = 16,
                 hidden: int = 128, n_layers: int = 3):
        super().__init__()
        self.emotion = nn.Embedding(n_emotions, emotion_dim)
        layers, width = [], expression_dim + emotion_dim
        for _ in range(n_layers - 1):
            layers += [nn.Linear(width, hidden), nn.LeakyReLU(0.2)]
            width = hidden
        self.mlp = nn.Sequential(*layers, nn.Linear(width, 1))

    def forward(self, expression: torch.Tensor, emotion: torch.Tensor) -> torch.Tensor:
        y = self.emotion(emotion)[:, None].expand(-1, expression.shape[1], -1)
        return self.mlp(torch.cat([expression, y], dim=-1))[..., 0]
