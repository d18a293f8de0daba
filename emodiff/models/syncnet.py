"""SyncNet "S" (Chung & Zisserman 2016, "Out of time"): our definition of the released network in the layer layout
of the official `syncnet_v2.model` state dict (`netcnnaud`, `netfcaud`, `netcnnlip`, `netfclip`), so those weights
load with `SyncNet.from_syncnet_v2(path)` (`torch.load(weights_only=True)`, strict shape check); widths and the crop
size are configurable (tests train a tiny one). Scoring lives in emodiff.metrics.sync."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from emodiff.errors import EmodiffError
from emodiff.models.weights import load_state_dict


def _lip_feature_size(image_size: int) -> int:
    """Spatial size reaching the last lip convolution (6 for 224² crops)."""
    size = (image_size - 7) // 2 + 1  # conv 7×7 / 2
    size = (size - 3) // 2 + 1  # pool 3 / 2
    size = (size + 2 - 5) // 2 + 1  # conv 5×5 / 2, padding 1
    size = (size + 2 - 3) // 2 + 1  # pool 3 / 2, padding 1
    size = (size - 3) // 2 + 1  # pool 3 / 2 after three 3×3 convolutions
    if size < 1:
        raise EmodiffError(f"SyncNet crops of {image_size}² are too small; use at least 64².")
    return size


def _bn_relu(conv: nn.Module, channels: int, norm: type[nn.Module]) -> list[nn.Module]:
    return [conv, norm(channels), nn.ReLU()]


class SyncNet(ModelMixin, ConfigMixin):
    """SyncNet "S": audio (B, 1, 13, 20) and lip (B, 3, 5, S, S) streams → embeddings (B, embed_dim)."""

    @register_to_config
    def __init__(self, image_size: int = 224, audio_channels: tuple[int, ...] = (64, 192, 384, 256, 256, 512),
                 lip_channels: tuple[int, ...] = (96, 256, 256, 256, 256, 512), embed_dim: int = 1024) -> None:
        super().__init__()
        a, v = tuple(audio_channels), tuple(lip_channels)
        self.netcnnaud = nn.Sequential(
            *_bn_relu(nn.Conv2d(1, a[0], 3, padding=1), a[0], nn.BatchNorm2d), nn.MaxPool2d(1, 1),
            *_bn_relu(nn.Conv2d(a[0], a[1], 3, padding=1), a[1], nn.BatchNorm2d), nn.MaxPool2d(3, (1, 2)),
            *_bn_relu(nn.Conv2d(a[1], a[2], 3, padding=1), a[2], nn.BatchNorm2d),
            *_bn_relu(nn.Conv2d(a[2], a[3], 3, padding=1), a[3], nn.BatchNorm2d),
            *_bn_relu(nn.Conv2d(a[3], a[4], 3, padding=1), a[4], nn.BatchNorm2d), nn.MaxPool2d(3, 2),
            *_bn_relu(nn.Conv2d(a[4], a[5], (5, 4)), a[5], nn.BatchNorm2d))
        self.netcnnlip = nn.Sequential(
            *_bn_relu(nn.Conv3d(3, v[0], (5, 7, 7), (1, 2, 2)), v[0], nn.BatchNorm3d), nn.MaxPool3d((1, 3, 3), (1, 2, 2)),
            *_bn_relu(nn.Conv3d(v[0], v[1], (1, 5, 5), (1, 2, 2), (0, 1, 1)), v[1], nn.BatchNorm3d),
            nn.MaxPool3d((1, 3, 3), (1, 2, 2), (0, 1, 1)),
            *_bn_relu(nn.Conv3d(v[1], v[2], (1, 3, 3), padding=(0, 1, 1)), v[2], nn.BatchNorm3d),
            *_bn_relu(nn.Conv3d(v[2], v[3], (1, 3, 3), padding=(0, 1, 1)), v[3], nn.BatchNorm3d),
            *_bn_relu(nn.Conv3d(v[3], v[4], (1, 3, 3), padding=(0, 1, 1)), v[4], nn.BatchNorm3d),
            nn.MaxPool3d((1, 3, 3), (1, 2, 2)),
            *_bn_relu(nn.Conv3d(v[4], v[5], (1, *(2 * (_lip_feature_size(image_size),)))), v[5], nn.BatchNorm3d))
        self.netfcaud = nn.Sequential(*_bn_relu(nn.Linear(a[5], a[5]), a[5], nn.BatchNorm1d), nn.Linear(a[5], embed_dim))
        self.netfclip = nn.Sequential(*_bn_relu(nn.Linear(v[5], v[5]), v[5], nn.BatchNorm1d), nn.Linear(v[5], embed_dim))

    def embed_audio(self, mfccs: torch.Tensor) -> torch.Tensor:
        return self.netfcaud(self.netcnnaud(mfccs).flatten(1))

    def embed_lips(self, clips: torch.Tensor) -> torch.Tensor:
        return self.netfclip(self.netcnnlip(clips).flatten(1))

    @classmethod
    def from_syncnet_v2(cls, path: str | Path) -> "SyncNet":
        """The official network from its released state dict (`syncnet_v2.model`)."""
        model = cls()
        state = load_state_dict(path)
        expected = model.state_dict()
        wrong = [k for k, v in expected.items() if k not in state or state[k].shape != v.shape]
        if wrong:
            raise EmodiffError(f"{path} is not a syncnet_v2 state dict: missing or mis-shaped {', '.join(wrong[:3])}.")
        model.load_state_dict({k: state[k] for k in expected})
        return model.eval()
