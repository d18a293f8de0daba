"""FID (Heusel et al. 2017) and FVD (Unterthiner et al. 2018): the Fréchet distance between Gaussians
fitted to network features of real and generated frames / 16-frame clips,

    d² = ‖μ₁ − μ₂‖² + tr(Σ₁ + Σ₂ − 2 (Σ₁ Σ₂)^{1/2}).

The feature networks are NOT re-implemented here: they are TorchScript files loaded from disk with
`torch.jit.load`, called with the conventions of the widely used StyleGAN2-ADA / StyleGAN-V metric files —
FID: `net(images_uint8 (N, 3, H, W), return_features=True) → (N, 2048)` (`inception-2015-12-05.pt`);
FVD: `net(videos_uint8 (N, 3, 16, H, W), rescale=True, resize=True, return_features=True) → (N, 400)`
(`i3d_torchscript.pt`). Any TorchScript module with the same call signature can stand in for them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import scipy.linalg
import torch

from emodiff.errors import EmodiffError
from emodiff.models.weights import module_device

FVD_CLIP_FRAMES = 16


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Squared Fréchet (2-Wasserstein) distance between N(μ₁, Σ₁) and N(μ₂, Σ₂)."""
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():  # singular product: add a small ridge to both covariances
        eps = np.eye(len(mu1)) * 1e-6
        covmean = scipy.linalg.sqrtm((sigma1 + eps) @ (sigma2 + eps))
    covmean = np.real(covmean)
    diff = mu1 - mu2
    distance = float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))
    return max(distance, 0.0)  # d² ≥ 0; tiny negatives are rounding


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased) covariance of features (N, D)."""
    features = np.asarray(features, dtype=np.float64)
    if len(features) < 2:
        raise EmodiffError("A Fréchet distance needs at least two feature vectors per set.")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet_distance_of_features(real: np.ndarray, fake: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (N, D)."""
    return frechet_distance(*feature_statistics(real), *feature_statistics(fake))


def load_feature_network(path: str | Path) -> torch.jit.ScriptModule:
    """A TorchScript feature network from a local file (never downloaded)."""
    path = Path(path)
    if not path.is_file():
        raise EmodiffError(f"Feature network {path} does not exist.")
    try:
        return torch.jit.load(str(path), map_location="cpu").eval()
    except Exception as err:
        raise EmodiffError(f"{path} is not a TorchScript model: {err}.") from err


@torch.no_grad()
def _features(net: torch.nn.Module, batches: Sequence[torch.Tensor], **kwargs: bool) -> np.ndarray:
    device = module_device(net)
    return np.concatenate([net(b.to(device), **kwargs).flatten(1).double().cpu().numpy() for b in batches])


def fid(net: torch.nn.Module, real_frames: np.ndarray, fake_frames: np.ndarray, batch_size: int = 64) -> float:
    """FID between two frame sets, uint8 (N, H, W, 3)."""
    def batches(frames: np.ndarray) -> list[torch.Tensor]:
        x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)
        return list(x.split(batch_size))

    return frechet_distance_of_features(_features(net, batches(real_frames), return_features=True),
                                        _features(net, batches(fake_frames), return_features=True))


def video_clips(videos: Sequence[np.ndarray], clip_frames: int = FVD_CLIP_FRAMES) -> torch.Tensor:
    """Non-overlapping clips uint8 (N, 3, clip_frames, H, W) from videos (T, H, W, 3)."""
    clips = [torch.from_numpy(np.ascontiguousarray(v[s:s + clip_frames])).permute(3, 0, 1, 2)
             for v in videos for s in range(0, len(v) - clip_frames + 1, clip_frames)]
    if not clips:
        raise EmodiffError(f"FVD needs videos of at least {clip_frames} frames.")
    return torch.stack(clips)


def fvd(net: torch.nn.Module, real_videos: Sequence[np.ndarray], fake_videos: Sequence[np.ndarray],
        batch_size: int = 8) -> float:
    """FVD between two video sets, each video uint8 (T, H, W, 3), over non-overlapping 16-frame clips."""
    kwargs = dict(rescale=True, resize=True, return_features=True)
    return frechet_distance_of_features(
        _features(net, video_clips(real_videos).split(batch_size), **kwargs),
        _features(net, video_clips(fake_videos).split(batch_size), **kwargs))
