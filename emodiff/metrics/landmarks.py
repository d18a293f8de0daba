"""Landmark distances M-LMD / F-LMD (Chen et al. 2019, ATVG; as used by EAMM and EAT).

On 68-point iBUG landmarks of aligned face crops (the evaluation crops are S×S, S stated in the report):
each frame's 68-point set is centred on its own mean (removing translation), then the Euclidean distance
between corresponding points is averaged over the region's points and the frames. F-LMD uses all 68 points, M-LMD the
mouth (points 48–67).
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
