"""RRDBNet, the ESRGAN / Real-ESRGAN generator, used as the optional super-resolution stage (docs/design.md §5.4).

Written from the ESRGAN paper (Wang et al. 2018: residual-in-residual dense blocks, residual scaling 0.2,
nearest-neighbour ×2 upsampling twice) and from the key layout of basicsr's checkpoints, so that the
released Real-ESRGAN files (`RealESRGAN_x4plus.pth`, `RealESRGAN_x2plus.pth`) load strictly:
`conv_first`, `body.N.rdb{1,2,3}.conv{1..5}`, `conv_body`, `conv_up1`, `conv_up2`, `conv_hr`, `conv_last`.
For output scales 2 and 1 the input is pixel-unshuffled (×4 / ×16 channels) so the trunk always
upsamples by 4. Images are RGB in [0, 1]. `residual=True` (not in the released models) adds the bicubic
upscale of the input to the output (and starts with a zero last convolution), so a small network trained from scratch starts
as bicubic and only learns the missing detail (the global residual of VDSR, Kim et al. 2016).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from emodiff.errors import EmodiffError

REAL_ESRGAN_RELEASES = "https://github.com/xinntao/Real-ESRGAN/releases"
RELEASED_WEIGHTS = {4: "RealESRGAN_x4plus.pth", 2: "RealESRGAN_x2plus.pth"}
_UNSHUFFLE = {4: 1, 2: 2, 1: 4}  # output scale -> pixel-unshuffle factor of the input


class ResidualDenseBlock(nn.Module):
    """Five densely connected 3×3 convolutions; the output is scaled by 0.2 and added to the input."""

    def __init__(self, num_feat: int, num_grow_ch: int) -> None:
        super().__init__()
        for i in range(1, 6):
            out_ch = num_feat if i == 5 else num_grow_ch
            setattr(self, f"conv{i}", nn.Conv2d(num_feat + (i - 1) * num_grow_ch, out_ch, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [x]
        for i in range(1, 5):
            feats.append(F.leaky_relu(getattr(self, f"conv{i}")(torch.cat(feats, 1)), 0.2))
        return x + 0.2 * self.conv5(torch.cat(feats, 1))


class RRDB(nn.Module):
    """Residual-in-residual dense block: three dense blocks inside a residual scaled by 0.2."""

    def __init__(self, num_feat: int, num_grow_ch: int) -> None:
        super().__init__()
        self.rdb1 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb2 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb3 = ResidualDenseBlock(num_feat, num_grow_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 0.2 * self.rdb3(self.rdb2(self.rdb1(x)))


class RRDBNet(ModelMixin, ConfigMixin):
    """ESRGAN generator: (B, 3, H, W) in [0, 1] → (B, 3, scale·H, scale·W). Real-ESRGAN x4plus: 64 feat, 23 blocks."""

    @register_to_config
    def __init__(self, scale: int = 4, num_in_ch: int = 3, num_out_ch: int = 3, num_feat: int = 64,
                 num_block: int = 23, num_grow_ch: int = 32, residual: bool = False) -> None:
        super().__init__()
        if scale not in _UNSHUFFLE:
            raise EmodiffError(f"RRDBNet supports scales 1, 2 and 4, not {scale}.")
        self.conv_first = nn.Conv2d(num_in_ch * _UNSHUFFLE[scale] ** 2, num_feat, 3, 1, 1)
        self.body = nn.Sequential(*[RRDB(num_feat, num_grow_ch) for _ in range(num_block)])
        self.conv_body = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_up1 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_up2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_hr = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_last = nn.Conv2d(num_feat, num_out_ch, 3, 1, 1)
        if residual:  # an untrained residual model is exactly bicubic
            nn.init.zeros_(self.conv_last.weight)
            nn.init.zeros_(self.conv_last.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        factor = _UNSHUFFLE[self.config.scale]
        feat = self.conv_first(F.pixel_unshuffle(x, factor) if factor > 1 else x)
        feat = feat + self.conv_body(self.body(feat))
        for conv_up in (self.conv_up1, self.conv_up2):
            feat = F.leaky_relu(conv_up(F.interpolate(feat, scale_factor=2, mode="nearest")), 0.2)
        out = self.conv_last(F.leaky_relu(self.conv_hr(feat), 0.2))
        if self.config.residual:
            out = out + F.interpolate(x, scale_factor=self.config.scale, mode="bicubic", align_corners=False)
        return out

    @torch.no_grad()
    def upscale(self, images: torch.Tensor) -> torch.Tensor:
        """Super-resolve images in [-1, 1] (the denoiser's range) and return them in [-1, 1]."""
        return (self((images.clamp(-1, 1) + 1) / 2).clamp(0, 1) * 2 - 1)

    @classmethod
    def from_basicsr(cls, path: str | Path) -> "RRDBNet":
        """Load a basicsr / Real-ESRGAN `.pth` (`params_ema` or `params`) with `weights_only=True`, strictly.

        The architecture (scale, width, depth, growth) is read from the tensor shapes.
        """
        path = Path(path)
        if not path.is_file():
            raise EmodiffError(
                f"Super-resolution weights {path} not found; download {RELEASED_WEIGHTS[4]} (x4) or "
                f"{RELEASED_WEIGHTS[2]} (x2) from {REAL_ESRGAN_RELEASES} and pass its path.")
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # any unreadable or unsafe pickle is the user's file problem
            raise EmodiffError(f"Cannot read super-resolution weights {path} as a basicsr checkpoint ({err}).") from err
        state = checkpoint
        if isinstance(checkpoint, dict):
            state = checkpoint.get("params_ema", checkpoint.get("params", checkpoint))
        required = ("conv_first.weight", "body.0.rdb1.conv1.weight", "conv_last.weight")
        if not isinstance(state, dict) or not all(key in state for key in required):
            raise EmodiffError(f"{path} is not an RRDBNet (ESRGAN / Real-ESRGAN) checkpoint: it lacks {', '.join(required)}.")
        conv_first = state["conv_first.weight"]
        num_out_ch = state["conv_last.weight"].shape[0]
        ratio = conv_first.shape[1] // num_out_ch
        scale = {f * f: s for s, f in _UNSHUFFLE.items()}.get(ratio)
        if scale is None or conv_first.shape[1] % num_out_ch:
            raise EmodiffError(f"{path} has {conv_first.shape[1]} input channels, which matches no RRDBNet scale.")
        num_block = 1 + max(int(m.group(1)) for key in state if (m := re.match(r"body\.(\d+)\.", key)))
        model = cls(scale=scale, num_in_ch=num_out_ch, num_out_ch=num_out_ch, num_feat=conv_first.shape[0],
                    num_block=num_block, num_grow_ch=state["body.0.rdb1.conv1.weight"].shape[0])
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as err:
            raise EmodiffError(f"{path} does not match the RRDBNet layout: {str(err).splitlines()[0]}") from err
        return model.eval()


class PatchDiscriminator(ModelMixin, ConfigMixin):
    """The optional adversary of `emodiff train super-resolution`: a PatchGAN (Isola et al. 2017) of
    spectrally normalised strided convolutions (as in Real-ESRGAN's discriminator), one logit per patch.
    Images are RGB in [0, 1]."""

    @register_to_config
    def __init__(self, num_feat: int = 32, num_layers: int = 3) -> None:
        super().__init__()
        sn = nn.utils.spectral_norm
        layers: list[nn.Module] = [nn.Conv2d(3, num_feat, 3, 1, 1), nn.LeakyReLU(0.2)]
        channels = num_feat
        for _ in range(num_layers):
            layers += [sn(nn.Conv2d(channels, channels * 2, 4, 2, 1, bias=False)), nn.LeakyReLU(0.2)]
            channels *= 2
        layers.append(nn.Conv2d(channels, 1, 3, 1, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images * 2 - 1)
