"""Train and evaluate the whole system on the synthetic world, end to end, and write a report (docs/design.md §11).

    emodiff synthetic-run --out runs/synthetic [--config configs/synthetic_run.yaml] [--profile quick]
                          [--set key=value ...]

Stages, each skipped when its result is already in OUT (so an interrupted run continues; the denoiser resumes
from its newest checkpoint): store/ (`make_store` with the training identities), denoiser/, expression/,
intensity/, readout/ (the `emodiff train` stages, configured by configs/synthetic_run.yaml), pipeline/
(`emodiff assemble`), then evaluation: the held-out identities (world identities after the training ones, never
rendered into the store) speak held-out speech (a fresh random stream of the world) at k = 0, 0.25, …, 1 for
every emotion and with the audio-predicted intensity, and the readout scores the frames:

- linearity: per emotion, Spearman ρ between k and the readout projected on the emotion's direction; FLIE
  (EMOdiffhead eq. 20) of the readout vectors and of the conditioning vectors over the k sweep;
- EmoAcc at k = 1: the readout's emotion head, video-level (mean probabilities over frames);
- lip sync: Pearson r between the readout's mouth opening and the true mouth opening of the speech;
- identity: PSNR / SSIM of the frames against the world's true render of the same identity with the asked
  expression and the speech's mouth (no readout involved);
- drift: PSNR against the true render per frame of longer videos (`evaluation.drift_frames`), frames 1–10 vs the
  last 10;
- intensity predictor: Pearson r between predicted and true k(t) on held-out speech of every level.

Every number is also computed on the true renders (the ceiling the readout allows). OUT/report.md, metrics.json,
plots and contact_sheet.png hold the results.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from emodiff.experiments.synthetic_run import DEFAULT_CONFIG, synthetic_run


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="run folder (a finished stage in it is kept)")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="run config (default configs/synthetic_run.yaml)")
    parser.add_argument("--profile", help="settings from the config's profiles, e.g. quick")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")


def run(args: argparse.Namespace) -> int:
    report = synthetic_run(args.out, args.config, args.profile, args.set)
    print(f"report written to {report}")
    return 0
