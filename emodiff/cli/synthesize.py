"""The synthetic world: render procedural talking faces whose truth is known into a clip store (docs/design.md §11).

A `SyntheticWorld` renders cartoon faces at any size with vectorised numpy (anti-aliased
signed-distance ellipses and curves). Every face is an identity (face shape, skin, hair, eyes,
background) times an expression in a small linear space of eight parameters,
`EXPRESSION_PARAMS`: mouth open, smile, frown, brow raise, brow furrow, eye openness, lip press,
cheek raise. Neutral is the origin and each emotion of `emodiff.data.labels.EMOTIONS` is a fixed
unit direction in that space (with no mouth-open component), so a clip's expression is

    e(t) = k(t) · d_emotion + mouth_open(t) · u_mouth + small noise,

the form of EMOdiffhead's eq. 14 with e_n = 0. mouth_open(t) is the lip-sync channel: it follows the
envelope of speech-like audio (voiced syllables whose formants and loudness open the mouth), and
the audio is louder and higher-pitched when the intensity k(t) is higher, so intensity can be
predicted from the audio. `make_store` writes MEAD-like clips (identity, emotion, level 1–3 with
frame-wise intensity fluctuation, neutral clips for every identity) straight into a clip store,
with the true landmarks (iBUG-68), expression and intensity as the clip's arrays.

As in FLAME, where the jaw opening is the separate jaw pose and not part of ψ, the stored condition
`expression.npy` is the emotional part only (its mouth_open column is 0) and the true mouth opening
is the extra per-clip array `mouth_open.npy` (T,): the denoiser must take the mouth from the audio,
so at sampling time (expression from the generator or the references) the lips still follow speech.
The rendered frames and landmarks show the full expression.

Coordinates: the face is modelled in normalised units with y pointing down (head about 1.1 wide
and 1.5 tall, nose near the origin). The crop is a square camera window of half-width 1 / CROP_ZOOM
centred at (0, CROP_CENTRE_Y), so pixel (row r, column c) of an S×S image has its centre at
x = ((c + 0.5)·2/S − 1) / CROP_ZOOM. Landmarks are stored in crop pixels with pixel centres at
integer coordinates (x_px = c, y_px = r).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from emodiff.data.labels import EMOTIONS
from emodiff.data.synthetic import export_videos, make_store

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("store", type=Path, help="clip store folder to create or complete")
    parser.add_argument("--identities", type=int, default=8, help="number of identities (default 8)")
    parser.add_argument("--clips", type=int, default=4, help="clips per identity, the first one neutral (default 4)")
    parser.add_argument("--frames", type=int, default=50, help="frames per clip (default 50)")
    parser.add_argument("--size", type=int, default=64, help="frame size in pixels (default 64)")
    parser.add_argument("--fps", type=int, default=25, help="frame rate (default 25)")
    parser.add_argument("--emotions", nargs="+", default=list(EMOTIONS), help="emotions to include (default: all)")
    parser.add_argument("--levels", nargs="+", type=int, default=[1, 2, 3], help="MEAD levels (default: 1 2 3)")
    parser.add_argument("--seed", type=int, default=0, help="world seed (default 0)")
    parser.add_argument("--held-out", type=int, default=0, help="last identities marked split=test (default 0)")
    parser.add_argument("--export", type=Path, help="also write every clip as mp4 + wav into this folder")
    parser.add_argument("--upscale", type=int, default=1, help="pixel repeat factor for the exported videos")


def run(args: argparse.Namespace) -> int:
    store = make_store(args.store, args.identities, args.clips, args.frames, args.size, args.fps, args.emotions,
                       args.levels, args.seed, args.held_out)
    print(f"{len(store.clip_ids())} synthetic clips in {store.root}")
    if args.export is not None:
        export_videos(store, args.export, upscale=args.upscale)
        print(f"videos in {args.export}")
    return 0
