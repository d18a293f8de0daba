"""Build a sampling pipeline folder from training runs, for `emodiff sample --checkpoint DIR`.

    emodiff assemble --denoiser RUN --store STORE [--expression RUN] [--intensity RUN] [--super-resolution RUN] --out DIR

RUN folders are those of `emodiff train denoiser` (unet/, reference_net/, config.yaml), `emodiff train
expression` (generator/), `emodiff train intensity` (model/) and `emodiff train super-resolution`
(super_resolution/, applied to every sampled frame). The store the denoiser was trained on gives
the neutral and per-emotion target expressions (e_n, e_y of eq. 14–15), the fps and the audio feature kind.
Without --expression the pipeline interpolates between those stored targets; without --intensity it has no
`--intensity audio`. A synthetic store's world description (stats/synthetic_world.json) is copied along, so
`emodiff demo --checkpoint DIR` renders faces of the same world. DIR is written to a temporary folder and
renamed when complete.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from emodiff.assemble import assemble
from emodiff.diffusion.schedulers import SAMPLERS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--denoiser", type=Path, required=True, help="`emodiff train denoiser` run folder")
    parser.add_argument("--store", type=Path, required=True, help="the clip store the denoiser was trained on")
    parser.add_argument("--expression", type=Path, help="`emodiff train expression` run folder (expression generator)")
    parser.add_argument("--intensity", type=Path, help="`emodiff train intensity` run folder (audio → intensity)")
    parser.add_argument("--super-resolution", type=Path,
                        help="`emodiff train super-resolution` run folder (upscales every sampled frame)")
    parser.add_argument("--out", type=Path, required=True, help="pipeline folder to write")
    parser.add_argument("--steps", type=int, help="sampling steps per frame the pipeline uses when a call names none "
                        "(default 25)")
    parser.add_argument("--sampler", choices=list(SAMPLERS), default="ddim",
                        help="the kind of its scheduler, which sampling uses when a call names none (default ddim)")
    parser.add_argument("--cfg-audio", type=float, default=1.0, help="its default audio guidance scale (default 1, none)")
    parser.add_argument("--cfg-exp", type=float, default=1.0,
                        help="its default expression guidance scale (default 1, none)")


def run(args: argparse.Namespace) -> int:
    pipeline = assemble(args.denoiser, args.store, args.out, args.expression, args.intensity, args.super_resolution,
                        args.steps, (args.cfg_audio, args.cfg_exp), args.sampler)
    present = [name for name, component in pipeline.components().items() if component is not None]
    print(f"pipeline with {', '.join(present)} written to {args.out}")
    reference = pipeline.expression_reference.config
    if reference.neutral_source != "neutral clips":
        print(f"The store has no neutral clips: the neutral expression e_n is the mean of each clip's calmest 10 % of "
              f"frames (as for prepare's pseudo intensity). Emotions: {', '.join(reference.emotions)}.")
    return 0
