"""Prepare raw videos into a clip store: aligned face crops, audio, features, landmarks, expressions.

`emodiff prepare SRC... --out STORE` (docs/design.md §3-4). SRC are video files or folders searched
recursively (mp4, mov, avi, mkv, webm). Two phases:

1. per clip, in parallel worker processes: frames at --fps, landmarks, nose-tip crops (align.py),
   16 kHz audio and its features, the expression extractor's per-clip arrays (the extractor is
   built once per process: `deca` loads the user's --deca-model and --flame-model). The clip is
   written atomically (`ClipStore.write_clip`) and listed as `extracted` in manifest.jsonl; a
   failure is listed as `failed` with its reason and the run goes on.
2. store-level finalisation: the expression basis (stats/), expression.npy and intensity.npy per
   clip, then the clip is listed as `ok`. The statistics are keyed by a fingerprint of the set of
   extracted clips; when the set changes, all clips are first listed as `extracted` again, the
   statistics are refitted and every clip is finalised anew.

Every step is a rename or a single manifest line, so a kill at any moment loses only the clip in
progress, and a rerun (which skips what is done) gives the same store as an uninterrupted run.
With --shard i/n (or accelerate's RANK / WORLD_SIZE) a process only extracts its share; run once
more without --shard to finalise.
"""

from __future__ import annotations

import argparse
import os

from emodiff.data.audio_features import AUDIO_FEATURES
from emodiff.data.expression import EXPRESSION_EXTRACTORS
from emodiff.data.landmarks import LANDMARK_DETECTORS
from emodiff.data.prepare import PrepareSettings, prepare


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sources", nargs="+", metavar="SRC", help="video files or folders (searched recursively)")
    parser.add_argument("--out", required=True, help="the clip store folder (created or resumed)")
    parser.add_argument("--size", type=int, default=128, help="crop size in pixels (128; 256 allowed)")
    parser.add_argument("--fps", type=float, default=25.0, help="frame rate of the store")
    parser.add_argument("--audio-features", default="mel", choices=sorted(AUDIO_FEATURES), help="docs/design.md §4.1")
    parser.add_argument("--audio-model", help="local folder or hub id of the hubert / wav2vec2 model")
    parser.add_argument("--expression", default="landmarks", choices=sorted(EXPRESSION_EXTRACTORS))
    parser.add_argument("--deca-model", help="DECA's deca_model.tar (for --expression deca)")
    parser.add_argument("--flame-model", help="FLAME 2020 generic_model.pkl (for --expression deca; "
                        "DECA's landmark_embedding.npy must lie beside it or beside --deca-model)")
    parser.add_argument("--device", default="cpu", help="torch device of the deca extractor (cpu, cuda, cuda:1)")
    parser.add_argument("--landmarks", default="mediapipe", choices=sorted(LANDMARK_DETECTORS))
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="worker processes")
    parser.add_argument("--shard", help="i/n: extract only the i-th of n shares of the sorted sources")
    parser.add_argument("--retry-failed", action="store_true", help="process sources that failed before again")


def run(args: argparse.Namespace) -> int:
    settings = PrepareSettings(args.size, args.fps, args.audio_features, args.audio_model, args.expression,
                               args.landmarks)
    summary = prepare(args.sources, args.out, settings, args.workers, args.shard, args.retry_failed,
                      args.deca_model, args.flame_model, args.device)
    rate = summary["frames"] / max(summary["seconds"], 1e-9)
    print(f"prepare: {summary['extracted']} extracted, {summary['failed']} failed, {summary['skipped']} skipped "
          f"({summary['frames']} frames, {rate:.1f} frames/s); "
          + (f"{summary['finalised']} finalised" if summary["finalised"] is not None
             else "finalisation left to a run without --shard")
          + f"; {summary['ok']} clips ok in {args.out}")
    return 1 if summary["failed"] else 0
