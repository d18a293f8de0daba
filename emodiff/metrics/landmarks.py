"""Landmark distances M-LMD / F-LMD (Chen et al. 2019, ATVG; as used by EAMM and EAT).

On 68-point iBUG landmarks of aligned face crops (the evaluation crops are S×S, S stated in the report):
each frame's 68-point set is centred on its own mean (removing translation), then the Euclidean distance
between corresponding points is averaged over the region's points and the frames. F-LMD uses all 68 points, M-LMD the
mouth (points 48–67). The mouth-opening correlation compares how the mouth opens and closes over time.
"""

from __future__ import annotations

import numpy as np

from emodiff.errors import EmodiffError

MOUTH = slice(48, 68)
FACE = slice(0, 68)


def landmark_distance(reference: np.ndarray, generated: np.ndarray, region: slice = FACE) -> float:
    """Mean per-point distance between centred landmark sets (T, 68, 2) over `region` and frames."""
    ref = np.asarray(reference, dtype=np.float64)
    gen = np.asarray(generated, dtype=np.float64)
    if ref.shape != gen.shape or ref.shape[1:] != (68, 2):
        raise EmodiffError(f"Landmark sequences must both be (T, 68, 2); got {ref.shape} and {gen.shape}.")
    ref = (ref - ref.mean(axis=1, keepdims=True))[:, region]
    gen = (gen - gen.mean(axis=1, keepdims=True))[:, region]
    return float(np.linalg.norm(ref - gen, axis=-1).mean())


def m_lmd(reference: np.ndarray, generated: np.ndarray) -> float:
    """M-LMD: landmark distance over the mouth points 48–67."""
    return landmark_distance(reference, generated, MOUTH)


def f_lmd(reference: np.ndarray, generated: np.ndarray) -> float:
    """F-LMD: landmark distance over all 68 points."""
    return landmark_distance(reference, generated, FACE)


def mouth_opening(points: np.ndarray) -> np.ndarray:
    """Per-frame opening of the inner lips (T,): the mean gap of the point pairs 61–67, 62–66, 63–65 over the
    distance of the outer eye corners 36–45, so the crop's scale does not count."""
    points = np.asarray(points, dtype=np.float64)
    gap = np.linalg.norm(points[:, [61, 62, 63]] - points[:, [67, 66, 65]], axis=-1).mean(1)
    return gap / np.maximum(np.linalg.norm(points[:, 36] - points[:, 45], axis=-1), 1e-6)


def mouth_correlation(reference: np.ndarray, generated: np.ndarray) -> float:
    """Pearson r of the mouth openings of two landmark sequences (T, 68, 2) of the same length; a mouth that never
    moves (zero variance) follows nothing, so it scores 0."""
    a, b = mouth_opening(reference), mouth_opening(generated)
    if len(a) != len(b):
        raise EmodiffError(f"Landmark sequences must have the same length; got {len(a)} and {len(b)}.")
    if len(a) < 2 or a.std() < 1e-9 or b.std() < 1e-9:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])
