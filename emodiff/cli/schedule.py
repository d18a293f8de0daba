"""Preview an intensity schedule and emotion timeline: check them and draw them to a PNG.

Examples:
  emodiff schedule --intensity "0:0.2,1.5:0.9,3:0.4" --emotion "happy@0,surprised@2" --duration 4 --plot k.png
  emodiff schedule --intensity audio --audio speech.wav --predictor runs/intensity/model --plot k.png
  emodiff schedule --intensity audio --audio-features clip/audio_feats.npy --predictor runs/intensity/model
"""

from __future__ import annotations

import argparse
from pathlib import Path

from emodiff.control.intensity import INTERPOLATIONS
from emodiff.control.preview import preview_schedule
from emodiff.control.schedule import ScheduleOptions
from emodiff.control.timeline import DEFAULT_CROSSFADE

def add_schedule_arguments(parser: argparse.ArgumentParser) -> None:
    """The `ScheduleOptions` flags (`emodiff schedule` and `emodiff sample`)."""
    parser.add_argument("--interpolation", choices=INTERPOLATIONS, default="linear", help="between key frames")
    parser.add_argument("--crossfade", type=float, default=DEFAULT_CROSSFADE, help="seconds per emotion change")
    parser.add_argument("--temperature", type=float, default=0.0,
                        help="prior temperature of an 'audio' intensity (0 = deterministic)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply an 'audio' intensity")
    parser.add_argument("--clip", type=float, nargs=2, default=(0.0, 1.0), metavar=("LOW", "HIGH"),
                        help="clip an 'audio' intensity to [LOW, HIGH]")
    parser.add_argument("--smooth-frames", type=int, default=0, help="moving-average width of an 'audio' intensity")


def schedule_options(args: argparse.Namespace) -> ScheduleOptions:
    """The `ScheduleOptions` of the flags of `add_schedule_arguments`."""
    return ScheduleOptions(args.interpolation, args.crossfade, args.temperature, args.scale, tuple(args.clip),
                           args.smooth_frames)


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
    k = preview_schedule(args.intensity, args.emotion or None, args.fps, schedule_options(args), duration=args.duration,
                         audio=args.audio, audio_features=args.audio_features, audio_kind=args.audio_kind,
                         predictor=args.predictor, plot=args.plot, save=args.save)
    print(f"{len(k)} frames at {args.fps:g} fps; k from {k.min():.3f} to {k.max():.3f} (mean {k.mean():.3f})")
    return 0
