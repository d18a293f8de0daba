"""PyTorch datasets over a clip store: memory-mapped arrays, no per-frame decoding (docs/design.md §3).

- `FrameDataset`: one sample per video frame, for the denoiser (paper §3.2, eq. 11–13, 16).
- `SequenceDataset`: fixed-length windows of expression / intensity / audio features, for the
  expression generator (§3.3) and the audio-to-intensity VAE.
"""

from __future__ import annotations

from typing import Callable, Protocol, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from emodiff.data.labels import EMOTIONS, NEUTRAL
from emodiff.data.store import Clip, ClipStore

MOUTH = slice(48, 68)  # iBUG-68 mouth points
EYES = slice(36, 48)   # iBUG-68 eye points


def window_indices(center: int, n: int, length: int) -> np.ndarray:
    """Frame indices center-n..center+n, clamped to the clip (edge frames repeat)."""
    return np.clip(np.arange(center - n, center + n + 1), 0, length - 1)


def region_mask(points: np.ndarray, size: int, margin: float = 0.25) -> np.ndarray:
    """A (size, size) float mask of the landmark points' bounding box grown by `margin` per side."""
    lo, hi = points.min(axis=0), points.max(axis=0)
    pad = (hi - lo) * margin + 1.0
    x0, y0 = np.floor(lo - pad).astype(int)
    x1, y1 = np.ceil(hi + pad).astype(int)
    mask = np.zeros((size, size), dtype=np.float32)
    mask[max(y0, 0):max(min(y1, size), 0), max(x0, 0):max(min(x1, size), 0)] = 1.0
    return mask


def moving_average(values: np.ndarray, width: int) -> np.ndarray:
    """Centred moving average of (T, ...) values over `width` frames along time, the edge frames repeated."""
    half = width // 2
    padded = np.concatenate([values[:1].repeat(half, 0), values, values[-1:].repeat(width - 1 - half, 0)])
    sums = np.cumsum(np.concatenate([np.zeros_like(values[:1]), padded]), axis=0, dtype=np.float64)
    return ((sums[width:] - sums[:-width]) / width).astype(values.dtype)


def to_uint8(frames: torch.Tensor) -> np.ndarray:
    """float (..., 3, H, W) in [-1, 1] → uint8 (..., H, W, 3): the inverse of `frames_to_tensor`."""
    return ((frames.float() + 1) * 127.5).round().clamp(0, 255).byte().movedim(-3, -1).cpu().numpy()


def frames_to_tensor(frames: np.ndarray, resolution: int | None = None) -> torch.Tensor:
    """uint8 (..., S, S, 3) → float (..., 3, R, R) in [-1, 1], resized with antialiasing if asked."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).float().div_(127.5).sub_(1.0)
    x = x.movedim(-1, -3)
    if resolution is not None and x.shape[-1] != resolution:
        lead = x.shape[:-3]
        x = F.interpolate(x.reshape(-1, *x.shape[-3:]), size=(resolution, resolution),
                          mode="bilinear", antialias=True, align_corners=False)
        x = x.reshape(*lead, 3, resolution, resolution)
    return x


def emotion_label(clip: Clip) -> int:
    """Index into EMOTIONS, or -1 when the clip has no label."""
    return EMOTIONS.index(clip.emotion) if clip.emotion in EMOTIONS else -1


IDENTITY_SOURCES = ("clip", "neutral")


class IntensityReader(Protocol):
    """Reads k per frame from expression vectors (emodiff.control.intensity.IntensityMeasure, the inverse of eq. 14)."""

    def read(self, expression: np.ndarray, emotion: str | None) -> np.ndarray: ...


class FrameDataset(Dataset):
    """Denoiser samples: target frame, identity frame, two motion frames, condition windows, masks.

    Each item is a dict of tensors:
      target (3,R,R), identity (3,R,R), motion (6,R,R) = frames i−2 ⊕ i−1 (the identity frame where
      i−k < 0), audio (2n+1, F), expression (2n+1, D), emotion () (−1 = unlabelled), mouth_mask (1,R,R),
      eye_mask (1,R,R), and with an `intensity_measure`, intensity (): the frame's k read back from its
      expression by the inverse of eq. 14 (`IntensityMeasure.from_store`: the store's e_n and e_y, 1 = the mean
      expression of the emotion's strongest level, as for the interpolation; 0 for neutral and unlabelled
      clips), the condition of the intensity-control variants. Images are in [−1, 1].
    The identity frame is a random frame of the same clip (`identity_source="clip"`, the paper, eq. 11)
    or of a neutral clip of the same person (`"neutral"`, like the neutral portrait given at sampling
    time, so the identity frame cannot tell the emotion; clips whose person has no neutral clip fall
    back to their own frames).
    Clips without audio features are skipped (they still train the expression generator).
    """

    def __init__(
        self,
        store: ClipStore | str,
        window: int = 2,
        resolution: int | None = None,
        clip_ids: Sequence[str] | None = None,
        seed: int = 0,
        identity_source: str = "clip",
        intensity_measure: IntensityReader | None = None,
        expression_smoothing: int = 0,
    ):
        if identity_source not in IDENTITY_SOURCES:
            raise ValueError(f"identity_source must be one of {', '.join(IDENTITY_SOURCES)}, not {identity_source!r}")
        self.store = store if isinstance(store, ClipStore) else ClipStore.open(store)
        ids = list(clip_ids) if clip_ids is not None else self.store.clip_ids()
        self.clips = [c for c in (self.store.clip(i) for i in ids) if c.has_audio]
        if not self.clips:
            raise ValueError(f"no clips with audio features in {self.store.root}")
        self.identity_clips = self.clips
        if identity_source == "neutral":  # each person's first neutral clip
            neutral = {c.identity: c for c in reversed(self.clips) if c.emotion == EMOTIONS[NEUTRAL] and c.identity is not None}
            self.identity_clips = [neutral.get(c.identity, c) for c in self.clips]
        self.window = window
        self.resolution = resolution
        self.seed = seed
        self.expression_smoothing = int(expression_smoothing)
        self._smoothed: dict[int, np.ndarray] = {}
        self.intensity_measure = intensity_measure
        lengths = np.array([c.n_frames for c in self.clips])
        self._offsets = np.concatenate([[0], np.cumsum(lengths)])

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def feature_statistics(self, name: str, max_clips: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-dimension mean and standard deviation of a per-frame clip array ("audio_feats",
        "expression") over every frame of at most `max_clips` evenly spaced clips; a dimension that
        never varies gets σ = 1, so it is centred but not blown up."""
        picks = np.unique(np.linspace(0, len(self.clips) - 1, min(max_clips, len(self.clips))).astype(int))
        total, squares, count = 0.0, 0.0, 0
        for c in picks:
            values = np.asarray(getattr(self.clips[c], name), dtype=np.float64)
            total, squares, count = total + values.sum(0), squares + (values ** 2).sum(0), count + len(values)
        mean = total / count
        std = np.sqrt(np.maximum(squares / count - mean ** 2, 0.0))
        std = np.where(std > 1e-6, std, 1.0)
        return torch.from_numpy(mean).float(), torch.from_numpy(std).float()

    def locate(self, index: int) -> tuple[int, int]:
        """(clip number, frame number) of a flat sample index."""
        c = int(np.searchsorted(self._offsets, index, side="right") - 1)
        return c, int(index - self._offsets[c])

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        c, i = self.locate(index)
        clip = self.clips[c]
        frames = clip.frames
        T = len(frames)
        # The identity frame is random but reproducible for a given (seed, index).
        identity_frames = self.identity_clips[c].frames
        identity = identity_frames[int(np.random.default_rng((self.seed, index)).integers(len(identity_frames)))]
        stack = np.stack([frames[i], identity] + [frames[k] if k >= 0 else identity for k in (i - 2, i - 1)])
        images = frames_to_tensor(stack, self.resolution)
        size = images.shape[-1]
        scale = size / frames.shape[1]
        lms = np.asarray(clip.landmarks[i]) * scale
        win = window_indices(i, self.window, T)
        item = {
            "target": images[0],
            "identity": images[1],
            "motion": images[2:].reshape(6, size, size),
            "audio": torch.from_numpy(np.asarray(clip.audio_feats[win], dtype=np.float32)),
            "expression": torch.from_numpy(np.asarray(self.expression(c)[win], dtype=np.float32)),
            "emotion": torch.tensor(emotion_label(clip)),
            "mouth_mask": torch.from_numpy(region_mask(lms[MOUTH], size))[None],
            "eye_mask": torch.from_numpy(region_mask(lms[EYES], size))[None],
        }
        if self.intensity_measure is not None:
            item["intensity"] = torch.tensor(self.intensity(clip, i))
        return item

    def expression(self, c: int) -> np.ndarray:
        """Clip c's expression vectors (T, D), or with `expression_smoothing` W their centred moving average over W
        frames (edge frames repeat), kept in memory per clip."""
        clip = self.clips[c]
        if self.expression_smoothing <= 1:
            return clip.expression
        if c not in self._smoothed:
            self._smoothed[c] = moving_average(np.asarray(clip.expression, dtype=np.float32), self.expression_smoothing)
        return self._smoothed[c]

    def intensity(self, clip: Clip, i: int) -> float:
        """k of frame i by `intensity_measure` (0 for neutral and unlabelled clips)."""
        if clip.emotion in (None, EMOTIONS[NEUTRAL]):
            return 0.0
        return float(self.intensity_measure.read(np.asarray(clip.expression[i:i + 1]), clip.emotion)[0])


class SequenceDataset(Dataset):
    """Windows of `length` frames (hop `stride`) over the clips that pass `keep`.

    Each item: expression (L, D), intensity (L,), emotion (), level () (−1 when unknown), and
    audio (L, F) when `require_audio` (clips without audio features are then skipped).
    """

    def __init__(
        self,
        store: ClipStore | str,
        length: int,
        stride: int | None = None,
        require_audio: bool = False,
        keep: Callable[[Clip], bool] | None = None,
        clip_ids: Sequence[str] | None = None,
    ):
        self.store = store if isinstance(store, ClipStore) else ClipStore.open(store)
        ids = list(clip_ids) if clip_ids is not None else self.store.clip_ids()
        self.clips = [
            c for c in (self.store.clip(i) for i in ids)
            if c.n_frames >= length and (c.has_audio or not require_audio) and (keep is None or keep(c))
        ]
        if not self.clips:
            raise ValueError(f"no clips of at least {length} frames pass the filter in {self.store.root}")
        self.length = length
        self.require_audio = require_audio
        stride = stride or length
        self.windows = [(c, s) for c, clip in enumerate(self.clips)
                        for s in range(0, clip.n_frames - length + 1, stride)]

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        c, s = self.windows[index]
        clip = self.clips[c]
        sl = slice(s, s + self.length)
        item = {
            "expression": torch.from_numpy(np.asarray(clip.expression[sl], dtype=np.float32)),
            "intensity": torch.from_numpy(np.asarray(clip.intensity[sl], dtype=np.float32)),
            "emotion": torch.tensor(emotion_label(clip)),
            "level": torch.tensor(clip.level if clip.level is not None else -1),
        }
        if self.require_audio:
            item["audio"] = torch.from_numpy(np.asarray(clip.audio_feats[sl], dtype=np.float32))
        return item
