"""Frame-quality metrics: PSNR, SSIM (Wang et al. 2004), CPBD (Narvekar & Karam 2011), identity similarity.

Frames are uint8 RGB arrays (..., H, W, 3); a video metric is the mean of its per-frame values.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
from scipy.ndimage import convolve1d

from emodiff.data.datasets import frames_to_tensor
from emodiff.models.weights import module_device

PEAK = 255.0


def psnr(reference: np.ndarray, test: np.ndarray) -> float:
    """PSNR = 10·log10(255² / MSE) in dB, MSE over all pixels of all frames (a frame that happens to be
    identical does not make a video's PSNR infinite); identical videos give +inf."""
    mse = np.mean((_frames(reference) - _frames(test)) ** 2)
    with np.errstate(divide="ignore"):
        return float(10.0 * np.log10(PEAK**2 / mse))


def psnr_drift(reference: np.ndarray, test: np.ndarray, frames: int) -> float:
    """PSNR of the last `frames` frames minus that of the first `frames` (dB): below 0, the video drifts away from
    its reference over time; 0 for a video equal to its reference at both ends."""
    first, last = psnr(reference[:frames], test[:frames]), psnr(reference[-frames:], test[-frames:])
    return 0.0 if first == last else last - first


def _gaussian_kernel(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    x = np.arange(size) - (size - 1) / 2
    k = np.exp(-(x**2) / (2 * sigma**2))
    return k / k.sum()


def ssim(reference: np.ndarray, test: np.ndarray) -> float:
    """Mean SSIM (Wang et al. 2004): Gaussian 11×11 window σ = 1.5, K1 = 0.01, K2 = 0.03, L = 255,
    per colour channel, over the valid region (no padding), averaged over pixels, channels and frames."""
    ref, out = _frames(reference), _frames(test)
    kernel = _gaussian_kernel()
    half = len(kernel) // 2

    def blur(a: np.ndarray) -> np.ndarray:  # separable Gaussian over H and W, valid part only
        a = convolve1d(convolve1d(a, kernel, axis=1, mode="constant"), kernel, axis=2, mode="constant")
        return a[:, half:-half, half:-half]

    c1, c2 = (0.01 * PEAK) ** 2, (0.03 * PEAK) ** 2
    mu_x, mu_y = blur(ref), blur(out)
    var_x = blur(ref * ref) - mu_x**2
    var_y = blur(out * out) - mu_y**2
    cov = blur(ref * out) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return float(ssim_map.mean())


def _frames(video: np.ndarray) -> np.ndarray:
    """(T, H, W, 3) float64 from one frame or a video."""
    a = np.asarray(video, dtype=np.float64)
    return a[None] if a.ndim == 3 else a


# CPBD constants (Narvekar & Karam 2011).
CPBD_BLOCK = 64
CPBD_BETA = 3.6
CPBD_P_JNB = 0.63
CPBD_EDGE_BLOCK_SHARE = 0.002


def marziliano_widths(gray: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Edge widths (Marziliano et al. 2002) at edge pixels whose gradient is mostly horizontal: along the
    row, the distance between the local intensity extrema on both sides of the edge (0 elsewhere)."""
    gx = cv2.Sobel(gray, cv2.CV_64F, 1, 0, ksize=3)
    gy = cv2.Sobel(gray, cv2.CV_64F, 0, 1, ksize=3)
    widths = np.zeros(gray.shape)
    height, width = gray.shape
    rows, cols = np.nonzero(edges & (np.abs(gx) >= np.abs(gy)) & (gx != 0))
    for r, c in zip(rows, cols):
        line = gray[r]
        rising = gx[r, c] > 0  # intensity grows to the right: extremum on the right is a maximum
        right = c
        while right + 1 < width and (line[right + 1] > line[right] if rising else line[right + 1] < line[right]):
            right += 1
        left = c
        while left > 0 and (line[left - 1] < line[left] if rising else line[left - 1] > line[left]):
            left -= 1
        widths[r, c] = right - left
    return widths


def cpbd(image: np.ndarray, canny_low: int = 50, canny_high: int = 150) -> float:
    """Cumulative probability of blur detection (Narvekar & Karam 2011) of one RGB or gray uint8 image.

    Canny edges decide the edge blocks (64×64 blocks with > 0.2 % edge pixels); in each, every edge pixel
    with Marziliano width w gets P = 1 − exp(−(w / w_JNB)^β), β = 3.6, with w_JNB = 5 when the block contrast
    (max − min) ≤ 50 and 3 otherwise. CPBD is the share of those edges with P ≤ P_JNB = 0.63. Higher = sharper.
    """
    img = np.asarray(image)
    gray = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY) if img.ndim == 3 else img
    gray = gray.astype(np.uint8)
    edges = cv2.Canny(gray, canny_low, canny_high) > 0
    widths = marziliano_widths(gray.astype(np.float64), edges)
    probabilities = []
    for top in range(0, gray.shape[0] - CPBD_BLOCK + 1, CPBD_BLOCK):
        for left in range(0, gray.shape[1] - CPBD_BLOCK + 1, CPBD_BLOCK):
            block = (slice(top, top + CPBD_BLOCK), slice(left, left + CPBD_BLOCK))
            if edges[block].sum() <= CPBD_EDGE_BLOCK_SHARE * CPBD_BLOCK**2:
                continue
            contrast = int(gray[block].max()) - int(gray[block].min())
            w_jnb = 5.0 if contrast <= 50 else 3.0
            w = widths[block][widths[block] > 0]
            probabilities.append(1.0 - np.exp(-((w / w_jnb) ** CPBD_BETA)))
    if not probabilities:
        return 0.0
    p = np.concatenate(probabilities)
    return float((p <= CPBD_P_JNB).mean()) if p.size else 0.0


def video_cpbd(frames: np.ndarray) -> float:
    """Mean CPBD over the frames of a video."""
    return float(np.mean([cpbd(f) for f in frames]))


@torch.no_grad()
def identity_similarity(embedder: torch.nn.Module, identity_frame: np.ndarray, frames: np.ndarray) -> float:
    """Mean cosine similarity between the face embedding of the identity frame and of each generated frame
    (CSIM). `embedder` maps float images in [-1, 1] (B, 3, H, W) to embeddings (B, D), e.g. an ArcFace
    network exported to TorchScript."""
    batch = frames_to_tensor(np.concatenate([identity_frame[None], frames])).to(module_device(embedder))
    emb = torch.nn.functional.normalize(embedder(batch).flatten(1).float(), dim=1).cpu()
    return float((emb[1:] @ emb[0]).mean())
