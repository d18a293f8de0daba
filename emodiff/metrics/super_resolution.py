"""Measures of a super-resolution stage: quality against the true high-resolution frames and temporal
consistency (docs/design.md §5.4; EMOdiffhead's last step upscales the 128² frames).

- `bicubic`: the baseline every learned upscaler must beat (antialiased bicubic, images in [-1, 1]).
- `flicker`: mean absolute frame-to-frame change of a video, in 0–255 grey levels; an upscaler that adds
  flicker has flicker(SR) > flicker(bicubic of the input) at the same resolution.
- `sr_quality`: PSNR / SSIM (`emodiff.metrics.quality`) of an upscaler and of bicubic against the truth.
- `describe` / `recorded`: the comment tag `emodiff sample` writes into each mp4 (which super-resolution made
  it) and its reading by `emodiff evaluate`; `load_upscaler` and `upscale_video` let evaluate score the same
  videos with and without a super-resolution stage.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from emodiff.data.datasets import frames_to_tensor, to_uint8
from emodiff.metrics.quality import psnr, ssim
from emodiff.models.rrdbnet import RRDBNet
from emodiff.models.weights import load_component

COMMENT_PREFIX = "emodiff super-resolution: "


def bicubic(images: torch.Tensor, scale: int) -> torch.Tensor:
    """Bicubic ×scale of images (B, 3, H, W) in [-1, 1], clamped to [-1, 1]."""
    return F.interpolate(images, scale_factor=scale, mode="bicubic", align_corners=False).clamp(-1, 1)


def flicker(video: np.ndarray) -> float:
    """Mean |x_{t+1} − x_t| over pixels, channels and consecutive frames of a uint8 video (T, H, W, 3)."""
    video = np.asarray(video, dtype=np.float64)
    if len(video) < 2:
        raise ValueError("flicker needs at least two frames")
    return float(np.abs(np.diff(video, axis=0)).mean())


@torch.no_grad()
def upscale_frames(upscale: Callable[[torch.Tensor], torch.Tensor], frames: np.ndarray,
                   batch_size: int = 64) -> np.ndarray:
    """uint8 frames (T, h, w, 3) through `upscale` (images in [-1, 1] → [-1, 1]) → uint8 (T, H, W, 3)."""
    out = [to_uint8(upscale(frames_to_tensor(frames[i:i + batch_size]))) for i in range(0, len(frames), batch_size)]
    return np.concatenate(out)


def sr_quality(upscale: Callable[[torch.Tensor], torch.Tensor], low: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """PSNR (dB) and SSIM of `upscale(low)` and of bicubic(low) against `truth` (uint8 frames)."""
    scale = truth.shape[1] // low.shape[1]
    ours = upscale_frames(upscale, low)
    base = upscale_frames(lambda x: bicubic(x, scale), low)
    return {"psnr": psnr(truth, ours), "ssim": ssim(truth, ours),
            "psnr_bicubic": psnr(truth, base), "ssim_bicubic": ssim(truth, base)}


def describe(model: RRDBNet | None, resolution: int) -> str:
    """The comment tag of a video sampled at `resolution` with super-resolution `model` (or none)."""
    if model is None:
        return f"{COMMENT_PREFIX}none ({resolution} px)"
    return f"{COMMENT_PREFIX}x{model.config.scale} ({resolution} → {resolution * model.config.scale} px)"


def recorded(comment: str | None) -> str | None:
    """What `describe` recorded in a video's comment tag ("none (32 px)", "x4 (32 → 128 px)"), else None."""
    if comment and comment.startswith(COMMENT_PREFIX):
        return comment[len(COMMENT_PREFIX):]
    return None


def load_upscaler(path: str | Path) -> RRDBNet:
    """An RRDBNet from a pipeline folder (its super_resolution/), a component folder (config.json) or a
    basicsr / Real-ESRGAN .pth; anything else is one sentence."""
    path = Path(path)
    if path.is_file():
        return RRDBNet.from_basicsr(path)
    folder = path / "super_resolution" if (path / "model_index.json").is_file() else path
    return load_component(folder, RRDBNet, f"{path} holds no super-resolution model (a pipeline folder with "
                          "super_resolution/, an `emodiff train super-resolution` output's super_resolution/, or a "
                          "Real-ESRGAN .pth).")


def upscale_video(path: Path, out: Path, model: RRDBNet, batch_size: int = 16) -> Path:
    """`path` with every frame through `model` (same fps and sound track) written to `out`, tagged with
    `describe`; sidecars `<name>.*` next to the video are copied along."""
    from emodiff.data.media import VideoWriter, load_audio, probe, read_video

    info = probe(path)
    audio = load_audio(path) if info.has_audio else None
    resolution = min(info.width, info.height)
    with VideoWriter(out, info.fps, audio=audio, comment=describe(model, resolution)) as writer:
        chunk: list[np.ndarray] = []
        for frame in [*read_video(path, info.fps), None]:
            if frame is not None:
                chunk.append(frame)
            if chunk and (frame is None or len(chunk) == batch_size):
                for upscaled in upscale_frames(model.upscale, np.stack(chunk)):
                    writer.write(upscaled)
                chunk = []
    for sidecar in path.parent.glob(f"{path.stem}.*"):
        if sidecar != path and sidecar.suffix.lower() in (".json", ".npy"):
            shutil.copyfile(sidecar, out.parent / sidecar.name)
    return out
