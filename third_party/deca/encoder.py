"""DECA's coarse encoder E_c (Feng et al. 2021, "Learning an Animatable Detailed 3D Face Model
from In-The-Wild Images", §4.1): a ResNet-50 (He et al. 2016) whose 2048-d pooled feature goes
through a 2048 → 1024 → 236 MLP giving the FLAME code

    shape β (100) | albedo α (50) | expression ψ (50) | pose θ (6: global, jaw) | camera c (3) | light l (27)

Parameter names follow DECA's `E_flame` state dict (`encoder.conv1.weight`,
`encoder.layer1.0.conv1.weight`, …, `layers.0.weight`, `layers.2.weight`), so the official
`deca_model.tar` loads strictly. No torchvision.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from emodiff.errors import EmodiffError

CODE_SPLIT = {"shape": 100, "tex": 50, "exp": 50, "pose": 6, "cam": 3, "light": 27}
RESNET50_BLOCKS = (3, 4, 6, 3)
CROP_SIZE = 224
LANDMARK_BOX_SCALE = 1.1  # DECA's 68-landmark box → face box
CROP_SCALE = 1.25         # face box → crop
DECA_SOURCE = "data/deca_model.tar of https://github.com/YadiraF/DECA"


class Bottleneck(nn.Module):
    """ResNet bottleneck: 1×1 → 3×3 (stride here) → 1×1 (×4 channels), plus the shortcut."""

    expansion = 4

    def __init__(self, in_channels: int, channels: int, stride: int = 1) -> None:
        super().__init__()
        out_channels = channels * self.expansion
        self.conv1 = nn.Conv2d(in_channels, channels, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.conv3 = nn.Conv2d(channels, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class ResNet50(nn.Module):
    """ResNet-50 trunk without the classifier: (B, 3, H, W) → globally pooled (B, 16·width).

    `width` = 64 is the standard network; smaller widths keep every parameter name (tests only).
    """

    def __init__(self, width: int = 64) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        channels = width
        for index, n_blocks in enumerate(RESNET50_BLOCKS):
            planes = width * 2 ** index
            blocks = [Bottleneck(channels, planes, stride=1 if index == 0 else 2)]
            blocks += [Bottleneck(planes * Bottleneck.expansion, planes) for _ in range(n_blocks - 1)]
            setattr(self, f"layer{index + 1}", nn.Sequential(*blocks))
            channels = planes * Bottleneck.expansion
        self.out_features = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, stride=2, padding=1)
        for index in range(len(RESNET50_BLOCKS)):
            x = getattr(self, f"layer{index + 1}")(x)
        return x.mean((2, 3))


class DecaEncoder(nn.Module):
    """DECA's E_flame: image crops (B, 3, 224, 224) RGB in [0, 1] → the 236-d FLAME code."""

    def __init__(self, width: int = 64, hidden: int = 1024) -> None:
        super().__init__()
        self.encoder = ResNet50(width)
        self.layers = nn.Sequential(nn.Linear(self.encoder.out_features, hidden), nn.ReLU(),
                                    nn.Linear(hidden, sum(CODE_SPLIT.values())))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.layers(self.encoder(images))

    @staticmethod
    def split(code: torch.Tensor) -> dict[str, torch.Tensor]:
        """The code's parts in DECA's order (`CODE_SPLIT`); light as (B, 9, 3) SH coefficients."""
        parts = dict(zip(CODE_SPLIT, torch.split(code, list(CODE_SPLIT.values()), dim=1)))
        parts["light"] = parts["light"].reshape(-1, 9, 3)
        return parts


def _read_checkpoint(path: Path) -> dict[str, Any]:
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for corrupt or non-weights files
        raise EmodiffError(f"{path} could not be read as DECA weights with torch.load(weights_only=True) "
                           f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})") from None
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("E_flame"), dict):
        raise EmodiffError(f"{path} is not a DECA model: it has no 'E_flame' state dict "
                           f"(get {DECA_SOURCE})")
    return checkpoint["E_flame"]


def _key_report(names: list[str]) -> str:
    shown = ", ".join(names[:8])
    return shown + (f" and {len(names) - 8} more" if len(names) > 8 else "")


def load_deca_encoder(path: str | os.PathLike) -> DecaEncoder:
    """Build the coarse encoder and load `E_flame` from DECA's `deca_model.tar`, strictly.

    The widths are read from `encoder.conv1.weight` (64) and `layers.0.weight` (1024); every
    other parameter must then match by name and shape, or EmodiffError names the missing,
    unexpected and mis-shaped ones. Returned in eval mode.
    """
    path = Path(path)
    if not path.is_file():
        raise EmodiffError(f"{path} not found: get {path.name} from {DECA_SOURCE}")
    state = _read_checkpoint(path)
    width = state["encoder.conv1.weight"].shape[0] if "encoder.conv1.weight" in state else 64
    hidden = state["layers.0.weight"].shape[0] if "layers.0.weight" in state else 1024
    model = DecaEncoder(width, hidden)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mis_shaped = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
                  if k in state and tuple(state[k].shape) != tuple(v.shape)]
    problems = [f"{label} {_key_report(names)}" for label, names in
                (("missing keys:", missing), ("unexpected keys:", unexpected),
                 ("wrong shapes (file vs model):", mis_shaped)) if names]
    if problems:
        raise EmodiffError(f"{path}: E_flame does not match DECA's coarse encoder — " + "; ".join(problems))
    model.load_state_dict(state, strict=True)
    return model.eval()


def crop_boxes(landmarks68: np.ndarray) -> np.ndarray:
    """DECA's square crop from 68 landmarks (T, 68, 2) in pixels → (T, 3) = (left, top, size):
    centre of the landmark box, side = int(mean(box width, height) × 1.1 × 1.25)."""
    low, high = landmarks68.min(1), landmarks68.max(1)
    centre = (low + high) / 2
    size = np.floor((high - low).sum(1) / 2 * LANDMARK_BOX_SCALE * CROP_SCALE)
    return np.concatenate([centre - size[:, None] / 2, size[:, None]], 1)


def crop_faces(frames: torch.Tensor, boxes: torch.Tensor, out_size: int = CROP_SIZE) -> torch.Tensor:
    """Bilinear resampling of each frame's box to out_size² (zeros outside the frame).

    frames (B, 3, H, W) float; boxes (B, 3) = (left, top, size) in pixels, with the box corners
    landing on the first and last output pixel centres (DECA's similarity warp).
    """
    height, width = frames.shape[-2:]
    steps = torch.linspace(0, 1, out_size, dtype=frames.dtype, device=frames.device)
    left, top, size = (boxes[:, i, None].to(frames) for i in range(3))
    xs = (left + size * steps) / (width - 1) * 2 - 1
    ys = (top + size * steps) / (height - 1) * 2 - 1
    grid = torch.stack([xs[:, None, :].expand(-1, out_size, -1), ys[:, :, None].expand(-1, -1, out_size)], -1)
    return F.grid_sample(frames, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


def to_crop_normalised(points: np.ndarray, boxes: np.ndarray, out_size: int = CROP_SIZE) -> np.ndarray:
    """Frame pixel coordinates (T, N, 2) → DECA's crop-normalised units ((−1, −1) top-left, (1, 1)
    bottom-right of the 224² crop, i.e. pixel = (u + 1) · 224 / 2)."""
    crop_pixels = (points - boxes[:, None, :2]) * (out_size - 1) / boxes[:, None, 2:3]
    return crop_pixels / (out_size / 2) - 1
