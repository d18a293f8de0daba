"""LPIPS (Zhang et al. 2018, "The Unreasonable Effectiveness of Deep Features as a Perceptual Metric").

Our own definition of the network, written from the paper: images in [-1, 1] pass the fixed scaling layer
(x − shift) / scale, a VGG16 or AlexNet trunk gives five ReLU feature maps, each is unit-normalised along
channels, the squared difference of the two images' maps is weighted by a learned 1×1 convolution (no bias),
averaged over space and summed over the five layers:

    LPIPS(x, y) = Σ_l mean_hw( w_l · (f̂_l(x) − f̂_l(y))² ).

Weights come from local files, read with `torch.load(weights_only=True)` (or safetensors): the trunk in
torchvision's `alexnet` / `vgg16` state_dict layout (`features.<i>.weight|bias`; the classifier keys are
ignored) and the linear layers in the `lpips` package layout (`weights/v0.1/alex.pth`: `lin<k>.model.1.weight`).
torchvision itself is not imported.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from emodiff.data.datasets import frames_to_tensor
from emodiff.errors import EmodiffError
from emodiff.models.weights import load_state_dict

# Official constants of the LPIPS scaling layer (inputs in [-1, 1]).
SCALING_SHIFT = (-0.030, -0.088, -0.188)
SCALING_SCALE = (0.458, 0.448, 0.450)

# Trunk layouts as (kind, args) in torchvision's `features` Sequential order; "tap" marks the ReLU
# outputs LPIPS compares. Indices therefore match torchvision's `features.<i>` keys.
_ALEX = [("conv", 3, 64, 11, 4, 2), ("relu",), ("tap",), ("pool", 3, 2),
         ("conv", 64, 192, 5, 1, 2), ("relu",), ("tap",), ("pool", 3, 2),
         ("conv", 192, 384, 3, 1, 1), ("relu",), ("tap",),
         ("conv", 384, 256, 3, 1, 1), ("relu",), ("tap",),
         ("conv", 256, 256, 3, 1, 1), ("relu",), ("tap",)]
_VGG16_BLOCKS = [(3, 64, 2), (64, 128, 2), (128, 256, 3), (256, 512, 3), (512, 512, 3)]


def _vgg16_layout() -> list[tuple]:
    layout: list[tuple] = []
    for block, (c_in, c_out, n_convs) in enumerate(_VGG16_BLOCKS):
        if block > 0:
            layout.append(("pool", 2, 2))
        for k in range(n_convs):
            layout += [("conv", c_in if k == 0 else c_out, c_out, 3, 1, 1), ("relu",)]
        layout.append(("tap",))
    return layout


TRUNKS: dict[str, list[tuple]] = {"alex": _ALEX, "vgg": _vgg16_layout()}


class LPIPS(nn.Module):
    """Learned perceptual distance between image batches in [-1, 1] (B, 3, H, W) → (B,)."""

    def __init__(self, trunk: str = "alex") -> None:
        super().__init__()
        if trunk not in TRUNKS:
            raise EmodiffError(f"Unknown LPIPS trunk '{trunk}'; choose one of: {', '.join(TRUNKS)}.")
        self.trunk = trunk
        self.register_buffer("shift", torch.tensor(SCALING_SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(SCALING_SCALE).view(1, 3, 1, 1))
        layers: list[nn.Module] = []
        self.taps: list[int] = []
        channels: list[int] = []
        last_channels = 3  # RGB
        for spec in TRUNKS[trunk]:
            if spec[0] == "tap":
                self.taps.append(len(layers) - 1)
                channels.append(last_channels)
            elif spec[0] == "conv":
                _, c_in, c_out, k, stride, pad = spec
                layers.append(nn.Conv2d(c_in, c_out, k, stride, pad))
                last_channels = c_out
            elif spec[0] == "relu":
                layers.append(nn.ReLU(inplace=False))
            else:
                layers.append(nn.MaxPool2d(spec[1], spec[2]))
        self.features = nn.Sequential(*layers)
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in channels)
        self.requires_grad_(False).eval()

    def _taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        h = (x - self.shift) / self.scale
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in self.taps:
                out.append(h / (h.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10))
            if i == self.taps[-1]:
                break
        return out

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        total = x.new_zeros(x.shape[0])
        for lin, fx, fy in zip(self.lins, self._taps(x), self._taps(y)):
            total = total + lin((fx - fy) ** 2).mean(dim=(1, 2, 3))
        return total

    @torch.no_grad()
    def frames_distance(self, a: np.ndarray, b: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """Per-frame LPIPS (T,) between two uint8 videos (T, H, W, 3) of equal length."""
        device = self.shift.device
        return torch.cat([self(frames_to_tensor(a[s:s + batch_size]).to(device),
                               frames_to_tensor(b[s:s + batch_size]).to(device)).cpu()
                          for s in range(0, len(a), batch_size)]).numpy()

    @classmethod
    def from_files(cls, trunk: str, backbone_path: str | Path, linear_path: str | Path) -> "LPIPS":
        """Build the network and load the trunk (torchvision layout) and linear layers (`lpips` layout)."""
        model = cls(trunk)
        backbone = load_state_dict(backbone_path)
        linear = load_state_dict(linear_path)
        state = {k: v for k, v in backbone.items() if k.startswith("features.")}
        for k in range(len(model.lins)):
            key = f"lin{k}.model.1.weight"
            if key not in linear:
                raise EmodiffError(f"{linear_path} is not an LPIPS linear-layer file: key '{key}' is missing.")
            state[f"lins.{k}.weight"] = linear[key]
        expected = {k: v.shape for k, v in model.state_dict().items() if k not in ("shift", "scale")}
        wrong = [k for k, shape in expected.items() if k not in state or state[k].shape != shape]
        if wrong:
            raise EmodiffError(f"{backbone_path} and {linear_path} do not hold an LPIPS {trunk} network: "
                               f"missing or mis-shaped {', '.join(wrong[:3])}.")
        model.load_state_dict(state, strict=False)
        return model
