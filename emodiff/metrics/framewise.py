"""Frame-wise intensity analysis (frame-wise intensity paper §4.3, Tables 3–4): Beat Align, Diversity,
Intensity-L2.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy.ndimage import gaussian_filter1d
from scipy.signal import find_peaks

from emodiff.errors import EmodiffError

# Bailando's Beat Align (Siyao et al. 2022, github lisiyao21/Bailando, utils/beat_align_score.py), which the
# framewise intensity paper follows [31]: the motion speed is smoothed by a Gaussian of σ = 5 frames before its
# local minima are taken (`calc_db`), and each music beat scores exp(−d² / 2·3²) (`BA`). Both σ are in frames
# of the evaluated sequence (Bailando's 60 fps dance, the paper's 25 fps MEAD; `emodiff evaluate` resamples
# every video to --fps, 25 by default, so the smoothing spans 0.2 s).
MOTION_SPEED_SIGMA_FRAMES = 5.0
BEAT_SIGMA_FRAMES = 3.0
DIVERSITY_PAIRS = 200_000  # frame pairs behind one Diversity value
DIVERSITY_CHUNK = 16_384  # pairs whose differences are held at once


def audio_onset_beats(audio16k: np.ndarray, fps: float, sample_rate: int = 16000) -> np.ndarray:
    """Frame indices of audio beats: peaks of the onset strength (positive log-energy flux, one value per
    video frame) that rise above its mean."""
    hop = sample_rate / fps
    n_frames = int(len(audio16k) // hop)
    if n_frames < 3:
        raise EmodiffError("The audio is too short to find beats (fewer than three video frames).")
    frames = np.asarray(audio16k[: int(n_frames * hop)], dtype=np.float64)
    energy = np.array([np.sum(frames[int(i * hop): int((i + 1) * hop)] ** 2) for i in range(n_frames)])
    flux = np.maximum(np.diff(np.log(energy + 1e-8), prepend=np.log(energy[0] + 1e-8)), 0.0)
    peaks, _ = find_peaks(flux, height=flux.mean())
    return peaks


def motion_beats(expressions: np.ndarray, smoothing: float = MOTION_SPEED_SIGMA_FRAMES) -> np.ndarray:
    """Frame indices of facial-motion beats (Bailando's kinematic beats): local minima of the expression
    speed ‖e_{t+1} − e_t‖ after Gaussian smoothing with σ = `smoothing` frames (0: raw speed). Without the
    smoothing every frame of jitter is a beat and jittered motion scores higher than smooth motion."""
    speed = np.linalg.norm(np.diff(np.asarray(expressions, dtype=np.float64), axis=0), axis=1)
    if smoothing > 0:
        speed = gaussian_filter1d(speed, smoothing, mode="reflect")  # scipy.ndimage.gaussian_filter's defaults
    minima, _ = find_peaks(-speed)
    return minima + 1  # speed[t] is the motion between frames t and t + 1


def beat_align(audio_beats: np.ndarray, facial_beats: np.ndarray, sigma: float = BEAT_SIGMA_FRAMES) -> float:
    """Beat Align score: mean over audio beats of exp(−d² / 2σ²), d = frame distance to the closest facial
    beat, σ = 3 frames. 1 = every audio beat has a facial beat at the same frame; higher is better."""
    if len(audio_beats) == 0:
        raise EmodiffError("Beat Align needs at least one audio beat.")
    if len(facial_beats) == 0:
        return 0.0
    d = np.abs(np.asarray(audio_beats)[:, None] - np.asarray(facial_beats)[None, :]).min(axis=1)
    return float(np.exp(-(d.astype(np.float64) ** 2) / (2 * sigma**2)).mean())


def diversity(expressions: Sequence[np.ndarray], max_pairs: int = DIVERSITY_PAIRS, seed: int = 0) -> float:
    """Diversity: mean Euclidean distance between two expression vectors of the generated videos (frames
    pooled, D each; the framewise intensity paper's average feature distance, following Bailando). Every
    pair of frames when there are at most `max_pairs`, else `max_pairs` pairs of distinct frames drawn
    uniformly with a fixed seed (unbiased; standard error = the spread of the pair distances ÷ √max_pairs,
    about 0.05 % of the value for 50-dim vectors), so memory and time stay linear in the number of frames. Higher = more varied expressions."""
    feats = np.concatenate([np.asarray(e, dtype=np.float64).reshape(-1, np.shape(e)[-1]) for e in expressions])
    n = len(feats)
    if n < 2:
        raise EmodiffError("Diversity needs at least two expression vectors.")
    if n * (n - 1) // 2 <= max_pairs:
        first, second = np.triu_indices(n, k=1)
    else:
        rng = np.random.default_rng(seed)
        first = rng.integers(0, n, max_pairs)
        second = (first + rng.integers(1, n, max_pairs)) % n  # uniform over the other n − 1 frames
    total = 0.0
    for start in range(0, len(first), DIVERSITY_CHUNK):
        a, b = first[start:start + DIVERSITY_CHUNK], second[start:start + DIVERSITY_CHUNK]
        total += np.linalg.norm(feats[a] - feats[b], axis=1).sum()
    return float(total / len(first))


def intensity_l2(target: np.ndarray, measured: np.ndarray) -> float:
    """Intensity-L2: mean squared error between the target and the measured per-frame intensity."""
    target, measured = np.asarray(target, dtype=np.float64), np.asarray(measured, dtype=np.float64)
    n = min(len(target), len(measured))
    if n == 0:
        raise EmodiffError("Intensity-L2 needs at least one frame.")
    return float(np.mean((target[:n] - measured[:n]) ** 2))

