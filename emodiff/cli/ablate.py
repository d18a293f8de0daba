"""The papers' ablation tables, trained and scored on the synthetic world (docs/design.md §11).

    emodiff ablate table2|table3|table4 --base RUN --out DIR [--report DIR] [--budget quick|finetune] [--set key=value ...]

RUN is a finished `emodiff synthetic-run` folder: its store, readout, expression generator and intensity VAE are
reused, and only what a table varies is trained (into DIR, skipped when finished there, so one DIR holds one
budget's runs), with the budget's steps: from scratch (`quick`), or for table3 (`finetune`) from RUN's own denoiser
with the expression encoder freshly initialised, so each intensity control is learnt anew on one trained backbone:

- table2 (EMOdiffhead Table 2, the "w/o ReferenceNet" row): the denoiser with and without the ReferenceNet
  (`unet.reference_levels=[]`); PSNR, SSIM against the world's true render of the same request, and CPBD.
- table3 (framewise intensity paper, Table 3): the denoiser's intensity control, interpolation (eq. 14–15) vs
  renorm vs concat vs scaling (`unet.expression_encoder`), on one backbone; EmoAcc, FLIE, Intensity-L2, Beat
  Align and the mouth's Pearson r, all read from the frames by the run's readout.
- table4 (EMOdiffhead Table 4 and Fig. 7): the expression GAN's four discriminator setups (TCN or plain
  convolution in D_g, with or without D_l); EmoAcc, FLIE and LIE (15 intensity levels, as the paper) of the
  world's true renders of G's conditions (so the numbers measure G alone), and a 2-D PCA embedding of real vs
  generated expression sequences per emotion.

Tables 2 and 3 sample the run's held-out sweep (held-out identities × emotions × k, held-out speech) with the
run's sampler, guidance and expression generator; the "interpolation" denoiser is the same run in both tables.
DIR/table{2,3,4}.md (in --report, default DIR) hold the tables, DIR/table{2,3,4}.json the numbers.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from emodiff.experiments.ablations import BUDGETS, TABLES, ablate
from emodiff.metrics.lpips import LPIPS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("table", choices=list(TABLES), help="which ablation table")
    parser.add_argument("--base", type=Path, required=True, help="a finished `emodiff synthetic-run` folder to reuse")
    parser.add_argument("--out", type=Path, required=True, help="folder of the variants' runs (finished ones are kept)")
    parser.add_argument("--report", type=Path, help="folder for TABLE.md and the figure (default: --out)")
    parser.add_argument("--budget", default="quick", help=f"one of: {', '.join(BUDGETS)}")
    parser.add_argument("--lpips", nargs=2, type=Path, metavar=("TRUNK", "LINEAR"),
                        help="AlexNet trunk and LPIPS linear-layer weights, for Table 4's LIE")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides of the run's config")


def run(args: argparse.Namespace) -> int:
    lpips = LPIPS.from_files("alex", *args.lpips) if args.lpips else None
    path = ablate(args.table, args.base, args.out, args.report or args.out, args.budget, args.set, lpips)
    print(f"table written to {path}")
    return 0
