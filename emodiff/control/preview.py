"""Preview an intensity schedule and emotion timeline: check them and draw them to a PNG.

Examples:
  emodiff schedule --intensity "0:0.2,1.5:0.9,3:0.4" --emotion "happy@0,surprised@2" --duration 4 --plot k.png
  emodiff schedule --intensity audio --audio speech.wav --predictor runs/intensity/model --plot k.png
  emodiff schedule --intensity audio --audio-features clip/audio_feats.npy --predictor runs/intensity/model
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from emodiff.control.plot import plot_schedule
from emodiff.control.schedule import ScheduleOptions, add_schedule_arguments, frame_schedule
from emodiff.data.audio_features import extract_audio_features, n_video_frames
from emodiff.data.media import load_audio
from emodiff.files import save_npy_atomic
from emodiff.errors import EmodiffError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--intensity", required=True, metavar="SPEC",
                        help="a number in [0, 1], key frames 'SECONDS:K,...', a per-frame .csv/.npy, or 'audio'")
    parser.add_argument("--emotion", metavar="TIMELINE", help="'happy' or 'happy@0,surprised@2' (seconds)")
    add_schedule_arguments(parser)
    parser.add_argument("--fps", type=float, default=25.0)
    length = parser.add_mutually_exclusive_group(required=True)
    length.add_argument("--duration", type=float, help="length of the audio in seconds")
    length.add_argument("--audio", type=Path, help="speech (audio or video file); its length sets T")
    length.add_argument("--audio-features", type=Path, metavar="NPY", help="frame-aligned audio features (T, F)")
    parser.add_argument("--audio-kind", default="mel", help="features computed from --audio for the predictor")
    parser.add_argument("--predictor", type=Path, help="trained intensity VAE folder (for 'audio')")
    parser.add_argument("--plot", type=Path, help="PNG to draw the schedule to")
    parser.add_argument("--save", type=Path, help=".npy to write the per-frame k to")


def run(args: argparse.Namespace) -> int:
    features = predictor = None
    if args.audio_features is not None:
        if not args.audio_features.is_file():
            raise EmodiffError(f"Audio features file {args.audio_features} does not exist.")
        features = np.load(args.audio_features, allow_pickle=False)
        n_frames = len(features)
    elif args.audio is not None:
        speech = load_audio(args.audio)
        n_frames = n_video_frames(len(speech), args.fps)
        if args.intensity.strip().lower() == "audio":
            features = extract_audio_features(speech, args.fps, kind=args.audio_kind)
    else:
        n_frames = int(round(args.duration * args.fps))
    if n_frames < 1:
        raise EmodiffError("The audio must last at least one frame.")
    if args.predictor is not None:
        from emodiff.models.intensity_vae import load_intensity_vae

        predictor = load_intensity_vae(args.predictor)
    k, weights = frame_schedule(args.emotion or None, args.intensity, n_frames, args.fps, ScheduleOptions.from_args(args),
                                features, predictor)
    if args.plot:
        plot_schedule(k, args.fps, args.plot, weights, title=f"intensity: {args.intensity}")
    if args.save:
        save_npy_atomic(args.save, k)
    print(f"{n_frames} frames at {args.fps:g} fps; k from {k.min():.3f} to {k.max():.3f} (mean {k.mean():.3f})")
    return 0
