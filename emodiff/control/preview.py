"""Preview an intensity schedule and emotion timeline: check them and draw them to a PNG (`emodiff schedule`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from emodiff.control.plot import plot_schedule
from emodiff.control.schedule import ScheduleOptions, frame_schedule
from emodiff.data.audio_features import extract_audio_features, n_video_frames
from emodiff.data.media import load_audio
from emodiff.files import save_npy_atomic
from emodiff.errors import EmodiffError


def preview_schedule(intensity: str, emotion: str | None, fps: float, options: ScheduleOptions,
                     duration: float | None = None, audio: Path | None = None, audio_features: Path | None = None,
                     audio_kind: str = "mel", predictor: Path | None = None, plot: Path | None = None,
                     save: Path | None = None) -> np.ndarray:
    """k (T,) of the `intensity` spec over the length of `audio_features` (a .npy of (T, F)), else of the speech
    `audio`, else `duration` seconds; an `audio` intensity is predicted by the intensity VAE folder `predictor`.
    The schedule (with the `emotion` timeline's weights) is drawn to `plot` and k saved to `save` when given."""
    features = vae = None
    if audio_features is not None:
        if not audio_features.is_file():
            raise EmodiffError(f"Audio features file {audio_features} does not exist.")
        features = np.load(audio_features, allow_pickle=False)
        n_frames = len(features)
    elif audio is not None:
        speech = load_audio(audio)
        n_frames = n_video_frames(len(speech), fps)
        if intensity.strip().lower() == "audio":
            features = extract_audio_features(speech, fps, kind=audio_kind)
    else:
        n_frames = int(round(duration * fps))
    if n_frames < 1:
        raise EmodiffError("The audio must last at least one frame.")
    if predictor is not None:
        from emodiff.models.intensity_vae import load_intensity_vae

        vae = load_intensity_vae(predictor)
    k, weights = frame_schedule(emotion, intensity, n_frames, fps, options, features, vae)
    if plot:
        plot_schedule(k, fps, plot, weights, title=f"intensity: {intensity}")
    if save:
        save_npy_atomic(save, k)
    return k
