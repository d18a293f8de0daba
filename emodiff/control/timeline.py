"""Emotion timelines: the target emotion changes over time, with a short cross-fade (docs/design.md §5.3).

Syntax: `EMOTION@SECONDS` items separated by commas, e.g. `"happy@0,surprised@2,sad@3.5"`:
each emotion starts at its time and lasts until the next one starts (the first one also covers
the time before its start). A bare `happy` is one emotion for the whole clip. At each change the
two emotions cross-fade linearly over `crossfade` seconds centred on the change (0.4 s by default).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from emodiff.control.intensity import interpolate_expression
from emodiff.data.labels import EMOTIONS, emotion_index
from emodiff.errors import EmodiffError

DEFAULT_CROSSFADE = 0.4


@dataclass(frozen=True)
class EmotionTimeline:
    """Emotion indices (into EMOTIONS) and the times (seconds) at which each one starts."""

    emotions: tuple[int, ...]
    starts: tuple[float, ...]

    def weights(self, n_frames: int, fps: float, crossfade: float = DEFAULT_CROSSFADE) -> np.ndarray:
        """Per-frame emotion weights (T, len(EMOTIONS)); rows sum to 1 and ramp linearly across each change."""
        t = np.arange(n_frames) / fps
        segment = np.clip(np.searchsorted(np.array(self.starts), t, side="right") - 1, 0, None)
        onehot = np.eye(len(self.emotions))[segment]
        width = int(round(crossfade * fps))
        if width > 1 and len(self.emotions) > 1:
            pad = width // 2
            padded = np.pad(onehot, ((pad, width - 1 - pad), (0, 0)), mode="edge")
            box = np.ones(width) / width
            onehot = np.stack([np.convolve(padded[:, s], box, mode="valid") for s in range(onehot.shape[1])], 1)
        weights = np.zeros((n_frames, len(EMOTIONS)), dtype=np.float32)
        for s, emotion in enumerate(self.emotions):
            weights[:, emotion] += onehot[:, s]
        return weights


def parse_emotions(spec: str, n_frames: int, fps: float) -> EmotionTimeline:
    """Parse `"happy@0,surprised@2"` (or a bare `"happy"`); unknown emotions, malformed items and
    start times beyond the audio are errors (one sentence)."""
    emotions, starts = [], []
    for item in spec.split(","):
        name, _, time = item.partition("@")
        emotions.append(emotion_index(name))
        try:
            starts.append(float(time) if time.strip() else 0.0)
        except ValueError:
            raise EmodiffError(
                f"Malformed emotion timeline item '{item.strip()}'; write EMOTION@SECONDS items separated by "
                "commas, e.g. 'happy@0,surprised@2'.") from None
    if any(b <= a for a, b in zip(starts, starts[1:])) or starts[0] < 0:
        raise EmodiffError(f"Emotion start times in '{spec}' must be non-negative and strictly increasing.")
    duration = n_frames / fps
    if starts[-1] >= duration:
        raise EmodiffError(f"Emotion change at {starts[-1]:g} s lies beyond the audio, which lasts {duration:.2f} s.")
    return EmotionTimeline(tuple(emotions), tuple(starts))


def expression_condition(neutral: np.ndarray, targets: np.ndarray, weights: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Per-frame expression condition from an emotion timeline and an intensity schedule.

    `neutral` (T, D) and `targets` (len(EMOTIONS), T, D) are generated expression sequences (rows of
    unused emotions may be anything); the target of frame i is the weighted mix Σ_y w_iy·e_y^(i),
    then eq. 14–15 give e_n + k_i·(e_y − e_n).
    """
    used = weights.any(axis=0)
    target = np.einsum("ty,ytd->td", weights[:, used], targets[used])
    return interpolate_expression(neutral, target, k)
