"""The synthetic world's readout network: its DECA, emotion classifier and lip meter (docs/design.md §11).

`ExpressionReadout` maps a face image of the synthetic world (`emodiff.data.synthetic`) to the eight
true expression parameters (`EXPRESSION_PARAMS`; the first, mouth_open, is the lip-sync channel)
and to emotion logits over `emodiff.data.labels.EMOTIONS`. It is trained on frames rendered on the
fly (`emodiff.train.readout`), so generated frames can be measured against the truth they were
asked for: the expression that drove them, the emotion, the mouth opening that follows the audio.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import ModelMixin
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.utils import BaseOutput
from torch import nn

from emodiff.data.datasets import frames_to_tensor


@dataclass
class ReadoutOutput(BaseOutput):
    """expression (B, n_params) and emotion_logits (B, n_emotions)."""

    expression: torch.Tensor
    emotion_logits: torch.Tensor


class ExpressionReadout(ModelMixin, ConfigMixin):
    """A small CNN: per level a 3×3 conv and a stride-2 3×3 conv (GroupNorm + SiLU), then an MLP on
    the flattened map, so the head knows where in the face each feature is.

    Inputs are RGB images in [-1, 1] of any size; they are resized to `resolution` first.
    """

    @register_to_config
    def __init__(self, resolution: int = 32, channels: tuple[int, ...] = (32, 64, 128), hidden: int = 256,
                 n_params: int = 8, n_emotions: int = 8):
        super().__init__()
        if resolution % 2 ** len(channels):
            raise ValueError(f"resolution {resolution} is not divisible by 2^{len(channels)}")
        layers: list[nn.Module] = []
        c_in = 3
        for c in channels:
            groups = min(8, c)
            layers += [nn.Conv2d(c_in, c, 3, padding=1), nn.GroupNorm(groups, c), nn.SiLU(),
                       nn.Conv2d(c, c, 3, stride=2, padding=1), nn.GroupNorm(groups, c), nn.SiLU()]
            c_in = c
        self.features = nn.Sequential(*layers)
        side = resolution // 2 ** len(channels)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(c_in * side * side, hidden), nn.SiLU(),
                                  nn.Linear(hidden, n_params + n_emotions))

    def forward(self, images: torch.Tensor) -> ReadoutOutput:
        size = self.config.resolution
        if images.shape[-2:] != (size, size):
            images = F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out = self.head(self.features(images))
        n = self.config.n_params
        return ReadoutOutput(expression=out[:, :n], emotion_logits=out[:, n:])

    @torch.no_grad()
    def read(self, frames: np.ndarray, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
        """Expression (T, n_params) and emotion probabilities (T, n_emotions) of uint8 frames (T, S, S, 3)."""
        expressions, probabilities = [], []
        for start in range(0, len(frames), batch_size):
            images = frames_to_tensor(np.asarray(frames[start:start + batch_size])).to(self.device, self.dtype)
            out = self(images)
            expressions.append(out.expression.float().cpu())
            probabilities.append(out.emotion_logits.float().softmax(-1).cpu())
        return torch.cat(expressions).numpy(), torch.cat(probabilities).numpy()
