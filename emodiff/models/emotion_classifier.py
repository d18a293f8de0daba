"""The face-crop emotion classifier behind EmoAcc (EMOdiffhead §4.3; trained by `emodiff train emotion-classifier`,
used by emodiff.metrics.emotion)."""

from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from emodiff.data.labels import EMOTIONS


class EmotionClassifier(ModelMixin, ConfigMixin):
    """Small CNN: face crops in [-1, 1] (B, 3, R, R) → logits over the 8 emotions (B, 8)."""

    @register_to_config
    def __init__(self, resolution: int = 64, channels: tuple[int, ...] = (32, 64, 128, 256),
                 num_classes: int = len(EMOTIONS), dropout: float = 0.2) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for c in channels:
            layers += [nn.Conv2d(c_in, c, 3, padding=1), nn.GroupNorm(min(8, c), c), nn.SiLU(),
                       nn.Conv2d(c, c, 3, padding=1, stride=2), nn.SiLU()]
            c_in = c
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(c_in, num_classes))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))
