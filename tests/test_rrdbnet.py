"""RRDBNet loads basicsr / Real-ESRGAN checkpoints strictly and computes the ESRGAN forward pass."""

from __future__ import annotations

import pickle

import pytest
import torch
import torch.nn.functional as F

from emodiff.errors import EmodiffError
from emodiff.models.rrdbnet import RRDBNet


def basicsr_state(scale: int, num_feat: int = 8, num_block: int = 2, grow: int = 4, seed: int = 0) -> dict:
    """A random state dict in basicsr's RRDBNet key layout, built from the key names alone."""
    gen = torch.Generator().manual_seed(seed)
    in_ch = 3 * {4: 1, 2: 4, 1: 16}[scale]

    def conv(out_ch: int, in_ch: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.randn(out_ch, in_ch, 3, 3, generator=gen) * 0.1, torch.randn(out_ch, generator=gen) * 0.01

    shapes = {"conv_first": (num_feat, in_ch)}
    for b in range(num_block):
        for r in (1, 2, 3):
            for i in range(1, 6):
                shapes[f"body.{b}.rdb{r}.conv{i}"] = (num_feat if i == 5 else grow, num_feat + (i - 1) * grow)
    for name in ("conv_body", "conv_up1", "conv_up2", "conv_hr"):
        shapes[name] = (num_feat, num_feat)
    shapes["conv_last"] = (3, num_feat)
    state = {}
    for name, (o, i) in shapes.items():
        state[f"{name}.weight"], state[f"{name}.bias"] = conv(o, i)
    return state


def reference_forward(state: dict, x: torch.Tensor, scale: int) -> torch.Tensor:
    """ESRGAN written out independently: space-to-depth, RRDB trunk (β = 0.2), two nearest ×2 + conv, output convs."""

    def conv(name: str, h: torch.Tensor) -> torch.Tensor:
        return F.conv2d(h, state[f"{name}.weight"], state[f"{name}.bias"], padding=1)

    lrelu = lambda h: torch.where(h >= 0, h, 0.2 * h)  # noqa: E731
    r = {4: 1, 2: 2, 1: 4}[scale]
    b, c, hh, ww = x.shape
    h = x.view(b, c, hh // r, r, ww // r, r).permute(0, 1, 3, 5, 2, 4).reshape(b, c * r * r, hh // r, ww // r)
    first = conv("conv_first", h)
    h = first
    blocks = sorted({k.split(".")[1] for k in state if k.startswith("body.")}, key=int)
    for blk in blocks:
        block_in = h
        for rdb in ("rdb1", "rdb2", "rdb3"):
            dense = [h]
            for i in range(1, 5):
                dense.append(lrelu(conv(f"body.{blk}.{rdb}.conv{i}", torch.cat(dense, 1))))
            h = h + 0.2 * conv(f"body.{blk}.{rdb}.conv5", torch.cat(dense, 1))
        h = block_in + 0.2 * h
    h = first + conv("conv_body", h)
    for name in ("conv_up1", "conv_up2"):
        h = lrelu(conv(name, h.repeat_interleave(2, 2).repeat_interleave(2, 3)))
    return conv("conv_last", lrelu(conv("conv_hr", h)))


@pytest.mark.parametrize("scale,key", [(4, "params_ema"), (2, "params"), (1, "params_ema")])
def test_loads_basicsr_checkpoint_and_matches_reference(tmp_path, scale, key):
    state = basicsr_state(scale)
    path = tmp_path / "RealESRGAN_tiny.pth"
    torch.save({key: state}, path)
    model = RRDBNet.from_basicsr(path)
    assert (model.config.scale, model.config.num_feat, model.config.num_block, model.config.num_grow_ch) == (scale, 8, 2, 4)
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = model(x)
    assert out.shape == (2, 3, 8 * scale, 8 * scale)
    torch.testing.assert_close(out, reference_forward(state, x, scale), rtol=1e-5, atol=1e-5)


def test_upscale_maps_denoiser_range(tmp_path):
    path = tmp_path / "sr.pth"
    torch.save({"params_ema": basicsr_state(2)}, path)
    model = RRDBNet.from_basicsr(path)
    x = torch.rand(1, 3, 8, 8) * 2 - 1
    y = model.upscale(x)
    expected = reference_forward(basicsr_state(2), (x + 1) / 2, 2).clamp(0, 1) * 2 - 1
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)


def test_save_pretrained_round_trip(tmp_path):
    model = RRDBNet(scale=2, num_feat=8, num_block=1, num_grow_ch=4)
    model.save_pretrained(tmp_path / "sr")
    again = RRDBNet.from_pretrained(tmp_path / "sr")
    x = torch.rand(1, 3, 4, 4)
    torch.testing.assert_close(model(x), again(x))


class Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_bad_weight_files_give_one_sentence(tmp_path):
    with pytest.raises(EmodiffError, match=r"RealESRGAN_x4plus\.pth.*github\.com/xinntao/Real-ESRGAN/releases"):
        RRDBNet.from_basicsr(tmp_path / "missing.pth")
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(EmodiffError, match="Cannot read"):
        RRDBNet.from_basicsr(corrupt)
    unsafe = tmp_path / "unsafe.pth"
    unsafe.write_bytes(pickle.dumps({"params_ema": Payload()}, protocol=2))
    with pytest.raises(EmodiffError, match="Cannot read"):
        RRDBNet.from_basicsr(unsafe)
    other = tmp_path / "other.pth"
    torch.save({"params": {"weight": torch.zeros(1)}}, other)
    with pytest.raises(EmodiffError, match="not an RRDBNet"):
        RRDBNet.from_basicsr(other)
    truncated = basicsr_state(4)
    del truncated["conv_hr.bias"]
    torch.save({"params_ema": truncated}, tmp_path / "truncated.pth")
    with pytest.raises(EmodiffError, match="does not match"):
        RRDBNet.from_basicsr(tmp_path / "truncated.pth")
