"""Draw an intensity schedule (and an emotion timeline's weights) to a PNG.

Figures are made with matplotlib's object API (`Figure`), not pyplot's global state, so several threads (the
app's sessions) can draw at once."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from emodiff.data.labels import EMOTIONS
from emodiff.files import atomic_path


def plot_schedule(k: np.ndarray, fps: float, path: str | Path, emotion_weights: np.ndarray | None = None,
                  title: str | None = None) -> Path:
    """Plot k over time (seconds), with the per-emotion weights (T, len(EMOTIONS)) below when given.

    The PNG is written under a temporary name and renamed, so an existing plot is never half replaced.
    """
    path = Path(path)
    t = np.arange(len(k)) / fps
    rows = 2 if emotion_weights is not None else 1
    fig = Figure(figsize=(8, 2.6 * rows))
    axes = fig.subplots(rows, 1, sharex=True, squeeze=False)
    ax = axes[0, 0]
    ax.plot(t, k, color="tab:red")
    ax.set_ylim(-0.05, 1.05)
    ax.set_ylabel("intensity k")
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title)
    if emotion_weights is not None:
        used = [y for y in range(len(EMOTIONS)) if emotion_weights[:, y].any()]
        axes[1, 0].stackplot(t, emotion_weights[:, used].T, labels=[EMOTIONS[y] for y in used], alpha=0.8)
        axes[1, 0].set_ylabel("emotion weight")
        axes[1, 0].legend(loc="upper right", fontsize="small")
    axes[-1, 0].set_xlabel("time (s)")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100)
    return path
