"""Emotion intensity: the interpolation of eq. 14–15, its inverse, and per-frame schedules of k (docs/design.md §5.3).

k means the same everywhere: 0 the neutral expression e_n, 1 the emotion's strongest level e_y (the mean
expression of its strongest MEAD level), in between the linear path e_n + k·(e_y − e_n). `IntensityMeasure`
reads k back from expression vectors (the inverse of eq. 14); the intensity-control variants of the
denoiser are trained on it and Intensity-L2 measures with it.

A schedule is a float32 array of length T (one k ∈ [0, 1] per video frame). `parse_intensity`
turns the `--intensity SPEC` of the command line into one:

- a number: constant k (`0.7`);
- key frames in seconds, `"0:0.2,1.5:0.9,3:0.4"`: linear or smooth (smoothstep) between keys,
  held constant before the first key and after the last;
- a path to a per-frame `.csv` (one value per row; the last column if there are several; a
  header row is skipped) or `.npy` (1-D): a file shorter than T holds its last value;
- `audio`: predicted from the audio features by an `IntensityVAE`, then smoothed, scaled and clipped.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, TypeVar

import numpy as np
import torch

from emodiff.data.expression import strongest_level_expressions
from emodiff.data.store import ClipStore
from emodiff.errors import EmodiffError

if TYPE_CHECKING:
    from emodiff.models.intensity_vae import IntensityVAE

Array = TypeVar("Array", np.ndarray, torch.Tensor)
INTERPOLATIONS = ("linear", "smooth")
_FILE_SUFFIXES = (".csv", ".npy")


def interpolate_expression(e_n: Array, e_y: Array, k: float | Array) -> Array:
    """Eq. 14–15 with the corrected direction: e_o = e_n + k·d_y, d_y = e_y − e_n.

    The paper prints d_y = e_n − e_y (eq. 15), which with eq. 14 would move away from the target
    emotion; its text and Fig. 3 mean the direction from neutral to the target, used here.
    `e_n`, `e_y` are (..., T, D) or (D,) arrays or tensors; `k` is a scalar or per-frame (T,).
    """
    if not np.isscalar(k) and k.ndim >= 1:
        k = k[..., None]
    return e_n + k * (e_y - e_n)


@dataclass
class IntensityMeasure:
    """Reads the intensity k back from expression vectors, the inverse of eq. 14 (e = e_n + k·d_y):
    k̂_t = ⟨e_t − e_n, d_y⟩ / ‖d_y‖², the k whose interpolation lies closest to e_t (not clipped, so the
    mean strongest-level expression reads exactly 1). e_n is the identity's neutral expression (key None:
    every other identity's; the origin when that is missing too), d_y the emotion's direction for that
    identity (key (emotion, None): for every other identity)."""

    neutral: dict[str | None, np.ndarray]  # identity → e_n
    directions: dict[tuple[str, str | None], np.ndarray]  # (emotion, identity) → d_y

    @classmethod
    def from_strongest_level(cls, neutral: np.ndarray, targets: dict[str, np.ndarray]) -> "IntensityMeasure":
        """One e_n and e_y per emotion for everybody (eq. 14's own, e.g. `strongest_level_expressions`)."""
        return cls({None: np.asarray(neutral, dtype=np.float64)},
                   {(emotion, None): np.asarray(target, dtype=np.float64) - neutral
                    for emotion, target in targets.items() if np.any(np.asarray(target) != neutral)})

    @classmethod
    def from_store(cls, store: ClipStore) -> "IntensityMeasure":
        """`from_strongest_level` with the store's e_n and e_y (`strongest_level_expressions`)."""
        return cls.from_strongest_level(*strongest_level_expressions(store))

    @classmethod
    def fit(cls, neutral: Iterable[tuple[str | None, np.ndarray]],
            emotional: Iterable[tuple[str, str | None, np.ndarray, np.ndarray]]) -> "IntensityMeasure":
        """Fit on labelled videos. `neutral`: (identity, expressions (T, D)) of neutral videos (k = 0), whose
        mean per identity and over all is e_n; `emotional`: (emotion, identity, expressions (T, D), target
        k (T,)), whose least-squares solution of e_t − e_n = k_t·d_y is d_y, per identity and over all."""
        sums: dict[str | None, list] = {}
        for identity, expression in neutral:
            for key in {identity, None}:
                total = sums.setdefault(key, [0.0, 0])
                total[0] = total[0] + np.asarray(expression, dtype=np.float64).sum(axis=0)
                total[1] += len(expression)
        measure = cls({key: total / count for key, (total, count) in sums.items() if count}, {})
        moments: dict[tuple[str, str | None], list] = {}
        for emotion, identity, expression, k in emotional:
            k = np.asarray(k, dtype=np.float64)[: len(expression)]
            offsets = measure.offsets(np.asarray(expression, dtype=np.float64)[: len(k)], identity)
            for key in {(emotion, identity), (emotion, None)}:
                moment = moments.setdefault(key, [0.0, 0.0])
                moment[0] = moment[0] + k @ offsets
                moment[1] += float(k @ k)
        measure.directions = {key: kd / kk for key, (kd, kk) in moments.items() if kk > 0 and np.any(kd)}
        return measure

    @property
    def emotions(self) -> list[str]:
        """The emotions whose intensity can be read."""
        return sorted({emotion for emotion, identity in self.directions if identity is None})

    def offsets(self, expression: np.ndarray, identity: str | None) -> np.ndarray:
        """e_t − e_n."""
        neutral = self.neutral.get(identity, self.neutral.get(None))
        return expression if neutral is None else expression - neutral

    def read(self, expression: np.ndarray, emotion: str | None, identity: str | None = None) -> np.ndarray:
        """k̂_t (T,) of expressions (T, D) of `identity` showing `emotion`."""
        if (emotion, None) not in self.directions:
            raise EmodiffError(f"No reference of the emotion '{emotion}' at a known intensity, so its intensity "
                               "cannot be measured." if emotion else "The video has no emotion label.")
        direction = self.directions.get((emotion, identity), self.directions[(emotion, None)])
        return self.offsets(np.asarray(expression, dtype=np.float64), identity) @ direction / (direction @ direction)


def check_range(k: np.ndarray, what: str) -> np.ndarray:
    """Raise one sentence when any k of `what` lies outside [0, 1] (or is not finite)."""
    k = np.asarray(k, dtype=np.float32)
    bad = ~np.isfinite(k) | (k < 0.0) | (k > 1.0)
    if bad.any():
        raise EmodiffError(f"Intensity {float(k[bad].flat[0]):g} in {what} is outside [0, 1].")
    return k


def constant_schedule(k: float, n_frames: int) -> np.ndarray:
    """k for every frame."""
    return np.full(n_frames, check_range(np.float32(k), "the constant intensity"), dtype=np.float32)


def parse_keyframes(text: str) -> list[tuple[float, float]]:
    """`"0:0.2,1.5:0.9"` → [(0.0, 0.2), (1.5, 0.9)]; times in seconds, strictly increasing."""
    keys = []
    for item in text.split(","):
        parts = item.split(":")
        try:
            if len(parts) != 2:
                raise ValueError
            t, k = float(parts[0]), float(parts[1])
        except ValueError:
            raise EmodiffError(
                f"Malformed intensity key frame '{item.strip()}' in '{text}'; write SECONDS:K pairs "
                "separated by commas, e.g. '0:0.2,1.5:0.9,3:0.4'.") from None
        keys.append((t, k))
    times = [t for t, _ in keys]
    if times[0] < 0 or any(b <= a for a, b in zip(times, times[1:])):
        raise EmodiffError(f"Intensity key frame times in '{text}' must be non-negative and strictly increasing.")
    check_range(np.array([k for _, k in keys]), f"the key frames '{text}'")
    return keys


def keyframe_schedule(keys: list[tuple[float, float]], n_frames: int, fps: float,
                      interpolation: str = "linear") -> np.ndarray:
    """Per-frame k through the key frames (seconds): linear or smoothstep between neighbouring
    keys, held constant before the first and after the last. Keys beyond the duration are an error."""
    if interpolation not in INTERPOLATIONS:
        raise EmodiffError(
            f"Unknown intensity interpolation '{interpolation}'; use one of: {', '.join(INTERPOLATIONS)}.")
    duration = n_frames / fps
    if keys[-1][0] > duration:
        raise EmodiffError(
            f"Intensity key frame at {keys[-1][0]:g} s lies beyond the audio, which lasts {duration:.2f} s.")
    times = np.array([t for t, _ in keys])
    values = np.array([k for _, k in keys])
    t = np.arange(n_frames) / fps
    if interpolation == "linear" or len(keys) == 1:
        return np.interp(t, times, values).astype(np.float32)
    seg = np.clip(np.searchsorted(times, t, side="right") - 1, 0, len(keys) - 2)
    u = np.clip((t - times[seg]) / (times[seg + 1] - times[seg]), 0.0, 1.0)
    smooth = u * u * (3.0 - 2.0 * u)
    return (values[seg] + smooth * (values[seg + 1] - values[seg])).astype(np.float32)


def load_schedule_file(path: str | Path, n_frames: int) -> np.ndarray:
    """Per-frame k from a `.csv` or `.npy` file; longer than `n_frames` is an error, shorter holds the last value."""
    path = Path(path)
    if not path.is_file():
        raise EmodiffError(f"Intensity file {path} does not exist.")
    try:
        if path.suffix.lower() == ".npy":
            k = np.load(path, allow_pickle=False)
        else:
            lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
            if lines and not _is_number(lines[0].split(",")[-1]):
                lines = lines[1:]
            k = np.array([float(ln.split(",")[-1]) for ln in lines])
    except ValueError:
        raise EmodiffError(f"Intensity file {path} is not a list of numbers, one per frame.") from None
    k = np.asarray(k, dtype=np.float32)
    if k.ndim != 1 or len(k) == 0:
        raise EmodiffError(f"Intensity file {path} must hold one value per frame (a non-empty 1-D array).")
    if len(k) > n_frames:
        raise EmodiffError(f"Intensity file {path} has {len(k)} frames, more than the {n_frames} frames of the audio.")
    check_range(k, f"the file {path}")
    return np.pad(k, (0, n_frames - len(k)), mode="edge")


def predicted_schedule(audio_features: np.ndarray, predictor: IntensityVAE, temperature: float = 0.0,
                       scale: float = 1.0, clip: tuple[float, float] = (0.0, 1.0), smooth_frames: int = 0,
                       seed: int = 0) -> np.ndarray:
    """k from the audio by the intensity VAE (framewise paper §3.1), then a centred moving average
    over `smooth_frames` frames, multiplied by `scale` and clipped to `clip` ⊆ [0, 1]."""
    lo, hi = clip
    if not 0.0 <= lo <= hi <= 1.0:
        raise EmodiffError(f"Intensity clip range ({lo:g}, {hi:g}) must satisfy 0 ≤ low ≤ high ≤ 1.")
    if audio_features.ndim != 2 or audio_features.shape[1] != predictor.config.audio_dim:
        raise EmodiffError(f"The audio features have shape {tuple(audio_features.shape)}, but the intensity predictor "
                           f"expects (frames, {predictor.config.audio_dim}); use the feature kind it was trained on.")
    feats = torch.as_tensor(np.asarray(audio_features, dtype=np.float32))[None]
    generator = torch.Generator().manual_seed(seed)
    k = predictor.predict(feats, temperature=temperature, generator=generator)[0].cpu().numpy()
    if smooth_frames > 1:
        pad = smooth_frames // 2
        padded = np.pad(k, (pad, smooth_frames - 1 - pad), mode="edge")
        k = np.convolve(padded, np.ones(smooth_frames) / smooth_frames, mode="valid")
    return np.clip(k * scale, lo, hi).astype(np.float32)


def parse_intensity(spec: str | float, n_frames: int, fps: float, *, interpolation: str = "linear",
                    audio_features: np.ndarray | None = None, predictor: IntensityVAE | None = None,
                    temperature: float = 0.0, scale: float = 1.0, clip: tuple[float, float] = (0.0, 1.0),
                    smooth_frames: int = 0) -> np.ndarray:
    """The per-frame schedule (T,) named by `spec`: a number, key frames, a .csv/.npy path or `audio`
    (see the module docstring); `audio` needs `audio_features` (T, F) and a `predictor`."""
    if isinstance(spec, (int, float)):
        return constant_schedule(float(spec), n_frames)
    text = spec.strip()
    if text.lower() == "audio":
        if audio_features is None or predictor is None:
            raise EmodiffError("An 'audio' intensity needs the audio features and a trained intensity predictor.")
        return predicted_schedule(audio_features[:n_frames], predictor, temperature, scale, clip, smooth_frames)
    if _is_number(text):
        return constant_schedule(float(text), n_frames)
    if Path(text).suffix.lower() in _FILE_SUFFIXES:
        return load_schedule_file(text, n_frames)
    if ":" in text:
        return keyframe_schedule(parse_keyframes(text), n_frames, fps, interpolation)
    raise EmodiffError(
        f"Intensity '{spec}' is not understood; give a number in [0, 1], key frames like '0:0.2,1.5:0.9', "
        "a .csv/.npy file or 'audio'.")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
