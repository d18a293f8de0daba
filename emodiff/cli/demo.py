"""Run the demo: a held-out synthetic face speaks with a rising intensity and an emotion change.

    emodiff demo [--out DIR] [--checkpoint DIR] [--steps N] [--seed S] [--cfg-exp S]
                 [--precision bf16] [--channels-last] [--compile] [--attention sdpa|xformers]

A face the demo pipeline never saw in training (an identity of the synthetic world, docs/design.md §11, rendered
with the world seed and size recorded in the pipeline folder's `synthetic_world.json`) speaks synthetic
speech (`SyntheticWorld.speech`, louder and higher when k is higher) for four seconds while the emotion
changes from happy to surprised and the intensity k follows key frames. The frames come from the
ordinary sampling path (`EmoDiffPipeline.conditions` + `sample`, eq. 14–15 for the expression condition).
DIR (default ./emodiff_demo) receives demo.mp4 (with the speech), intensity.png (k and the emotion
weights over time), contact_sheet.png (the identity image and frames with their k and emotion), and the inputs
identity.png (a render `emodiff sample` recognises as this world's face) and speech.wav. The demo's request is the
`SampleRequest` that `emodiff sample` and the app run, and it prints it as an `emodiff sample` command to run in DIR
(the speech then comes from speech.wav, so its frames differ from demo.mp4 by a few grey levels): change its
settings to try others.
The default checkpoint is the bundled one in emodiff/assets/demo, made by scripts/train_synthetic.sh.

The synthetic world is a test bed: the demo shows the mechanics of emotion and intensity control on
cartoon faces, not what a model trained on real recordings produces.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from emodiff.cli.sample import add_inference_arguments, inference_options
from emodiff.demo import run_demo


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("emodiff_demo"), help="output folder (default ./emodiff_demo)")
    parser.add_argument("--checkpoint", type=Path, help="pipeline folder (default: the bundled emodiff/assets/demo)")
    parser.add_argument("--steps", type=int, help="steps per frame of the pipeline's sampler (default: its own)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the speech and the sampling noise (default 0)")
    parser.add_argument("--cfg-exp", type=float,
                        help="classifier-free guidance scale for the expression (default: the pipeline's own; a "
                             "distilled pipeline has its own baked in)")
    add_inference_arguments(parser)


def run(args: argparse.Namespace) -> int:
    run_demo(args.out, args.checkpoint, args.steps, args.seed, args.cfg_exp, inference_options(args))
    return 0
