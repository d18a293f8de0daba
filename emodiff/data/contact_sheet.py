"""Contact sheets of a store's clips: face crops with their 68 landmarks over the intensity curve (`emodiff inspect`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from tqdm import tqdm

from emodiff.data.store import Clip, ClipStore
from emodiff.errors import EmodiffError
from emodiff.files import atomic_path


def contact_sheet(clip: Clip, path: Path, columns: int = 8) -> None:
    """Save `columns` evenly spaced crops with landmarks, and the intensity curve marking them."""
    n_frames = clip.n_frames
    picks = np.unique(np.linspace(0, n_frames - 1, min(columns, n_frames)).round().astype(int))
    figure = Figure(figsize=(1.6 * len(picks), 3.6))
    grid = figure.add_gridspec(2, len(picks), height_ratios=(1, 0.8))
    for column, index in enumerate(picks):
        axis = figure.add_subplot(grid[0, column])
        axis.imshow(clip.frames[index])
        points = clip.landmarks[index]
        axis.scatter(points[:, 0], points[:, 1], s=2, c="lime")
        axis.set_title(f"frame {index}", fontsize=7)
        axis.axis("off")
    curve = figure.add_subplot(grid[1, :])
    curve.plot(np.arange(n_frames) / clip.meta["fps"], clip.intensity, color="crimson")
    for index in picks:
        curve.axvline(index / clip.meta["fps"], color="grey", lw=0.5)
    curve.set_ylim(0, 1)
    curve.set_xlabel("seconds")
    curve.set_ylabel("intensity")
    label = ", ".join(str(v) for v in (clip.identity, clip.emotion, clip.level) if v is not None)
    figure.suptitle(f"{clip.clip_id}  {label}  ({n_frames} frames, audio: {'yes' if clip.has_audio else 'no'})",
                    fontsize=9)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=100)


def inspect_store(store_dir: str | Path, out: str | Path | None = None) -> tuple[int, Path]:
    """A contact sheet per finished clip of the store, <out>/<clip_id>.png (out defaults to STORE/inspect); returns
    how many were drawn and the folder."""
    store = ClipStore.open(store_dir)
    ids = store.clip_ids()
    if not ids:
        raise EmodiffError(f"{store_dir} has no finished clips to inspect.")
    folder = Path(out) if out else store.root / "inspect"
    folder.mkdir(parents=True, exist_ok=True)
    for clip_id in tqdm(ids, desc="inspect", unit="clip"):
        contact_sheet(store.clip(clip_id), folder / f"{clip_id}.png")
    return len(ids), folder
