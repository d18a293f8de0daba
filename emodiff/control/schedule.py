"""A whole schedule: the emotion timeline's weights and the intensity k per frame, from the command line's specs.

`emodiff sample`, `emodiff schedule` and `emodiff app` share the options (`ScheduleOptions`, the flags of
`emodiff.cli.schedule.add_schedule_arguments`) and the function that applies them (`frame_schedule`), so they accept
and refuse the same schedules with the same sentences.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from emodiff.control.intensity import parse_intensity
from emodiff.control.timeline import DEFAULT_CROSSFADE, parse_emotions

if TYPE_CHECKING:
    from emodiff.models.intensity_vae import IntensityVAE


@dataclass(frozen=True)
class ScheduleOptions:
    """How the specs become per-frame values: key-frame interpolation, emotion cross-fade (seconds), and for an
    `audio` intensity the predictor's temperature, scale, clip range and moving-average width."""

    interpolation: str = "linear"
    crossfade: float = DEFAULT_CROSSFADE
    temperature: float = 0.0
    scale: float = 1.0
    clip: tuple[float, float] = (0.0, 1.0)
    smooth_frames: int = 0

    def flags(self) -> list[str]:
        """The command-line flags that give these options (the inverse of `emodiff.cli.schedule.schedule_options`)."""
        return ["--interpolation", self.interpolation, "--crossfade", f"{self.crossfade:g}",
                "--temperature", f"{self.temperature:g}", "--scale", f"{self.scale:g}",
                "--clip", f"{self.clip[0]:g}", f"{self.clip[1]:g}", "--smooth-frames", str(self.smooth_frames)]


def emotion_weights(emotion: str, n_frames: int, fps: float, options: ScheduleOptions = ScheduleOptions()) -> np.ndarray:
    """The per-frame emotion weights (T, len(EMOTIONS)) of a timeline spec, cross-faded by `options.crossfade`."""
    return parse_emotions(emotion, n_frames, fps).weights(n_frames, fps, options.crossfade)


def intensity_schedule(intensity: str | float, n_frames: int, fps: float, options: ScheduleOptions = ScheduleOptions(),
                       audio_features: np.ndarray | None = None, predictor: IntensityVAE | None = None) -> np.ndarray:
    """k (T,) of an intensity spec; `audio_features` (T, F) and `predictor` are needed by an `audio` intensity."""
    return parse_intensity(intensity, n_frames, fps, interpolation=options.interpolation, audio_features=audio_features,
                           predictor=predictor, temperature=options.temperature, scale=options.scale, clip=options.clip,
                           smooth_frames=options.smooth_frames)


def frame_schedule(emotion: str | None, intensity: str | float, n_frames: int, fps: float,
                   options: ScheduleOptions = ScheduleOptions(), audio_features: np.ndarray | None = None,
                   predictor: IntensityVAE | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """k (T,) and the emotion weights (T, len(EMOTIONS)) (None without an emotion) of the specs; a bad spec is one
    sentence (`EmodiffError`)."""
    weights = None if emotion is None else emotion_weights(emotion, n_frames, fps, options)
    return intensity_schedule(intensity, n_frames, fps, options, audio_features, predictor), weights
