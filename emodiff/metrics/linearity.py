"""Linearity of intensity editing: FLIE (EMOdiffhead eq. 20) and LIE (LPIPS-based, EMOdiffhead ref. [24]).

Both take one video set generated at increasing intensities k_0 < k_1 < … < k_n (same identity and audio).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from emodiff.errors import EmodiffError
from emodiff.metrics.lpips import LPIPS


def _coefficient_of_variation(x: np.ndarray, axis: int) -> np.ndarray:
    """σ / |μ| along `axis` (population σ); +inf where μ = 0 and σ > 0, 0 where both are 0."""
    mean, std = np.abs(x.mean(axis=axis)), x.std(axis=axis)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(std == 0, 0.0, std / mean)


def flie(expressions_by_intensity: Sequence[np.ndarray]) -> float:
    """FLIE, eq. 20 of EMOdiffhead: Σ_j σ_i(d_{i,j}) / |μ_i(d_{i,j})|.

    `expressions_by_intensity[i]` holds the expression vectors (frames, D) of the video(s) generated at the
    i-th intensity, in increasing order. ē_i is their mean over frames, d_i = ē_i − ē_{i−1} (i = 1..n), and
    for every dimension j the coefficient of variation of d_{i,j} across i is summed over j.

    Reading of eq. 20: the printed formula sums over i while the CV is taken over i; the text ("the sum of
    the coefficients of variation", D = 50 dimensions) fixes the sum to run over the dimensions j. We take
    |μ| so that a dimension that decreases linearly counts like one that increases. A perfectly linear
    edit gives 0; every dimension with a tiny mean step weighs heavily, as in the paper's definition.
    """
    if len(expressions_by_intensity) < 3:
        raise EmodiffError("FLIE needs videos at three or more intensities (two or more adjacent differences).")
    means = np.stack([np.asarray(e, dtype=np.float64).reshape(-1, np.shape(e)[-1]).mean(axis=0)
                      for e in expressions_by_intensity])
    steps = np.diff(means, axis=0)
    return float(_coefficient_of_variation(steps, axis=0).sum())


def lie(lpips: LPIPS, frames_by_intensity: Sequence[np.ndarray]) -> float:
    """LIE: coefficient of variation, across adjacent intensity pairs, of the LPIPS distance between the
    frames with the same index; averaged over frames.

    `frames_by_intensity[i]` is the uint8 video (T, H, W, 3) generated at the i-th intensity (same identity
    and audio); videos are cut to the shortest. For a set of several videos, average the per-video values.
    """
    if len(frames_by_intensity) < 3:
        raise EmodiffError("LIE needs videos at three or more intensities.")
    n_frames = min(len(v) for v in frames_by_intensity)
    videos = [v[:n_frames] for v in frames_by_intensity]
    distances = np.stack([lpips.frames_distance(a, b) for a, b in zip(videos[:-1], videos[1:])])  # (n, T)
    return float(_coefficient_of_variation(distances, axis=0).mean())
