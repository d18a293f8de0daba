"""Train on a folder of talking-head clips and score self-reenactment on their held-out seconds.

    emodiff real-clips SRC... --out RUN [--config configs/real_clips.yaml] [--set KEY=VALUE ...] [--report DIR]

Every step is resumable: rerunning the same command continues where a killed run stopped.
1. split: every clip with speech is cut in time; its last `split.heldout_fraction` (25 %) is held out and never
   trained on (RUN/split/train/<clip>.mp4, RUN/split/heldout/<clip>.mp4). Clips without speech or too short
   are left out, each with its reason.
2. prepare both parts into clip stores with `emodiff prepare`'s code (RUN/store_train, RUN/store_heldout).
3. train the denoiser on the training store (RUN/denoiser; `denoiser_config` with the `denoiser` overrides);
   a killed run continues from its newest checkpoint.
4. assemble the pipeline (RUN/pipeline).
5. self-reenactment, the protocol of the field's papers: every held-out segment is generated from its first frame
   and its own speech (neutral, k = 0) and written beside the real segment and two baselines on the same frames,
   the identity frame repeated (`still`) and the real segment half a second late (`delayed`), as
   RUN/videos/<run>/<clip>.mp4; with `sample.real_motion`, also `model_real_motion`, the model given the real
   previous frames (teacher forcing), to tell the denoiser's error from the rollout's.
6. `emodiff evaluate` scores the runs against the real segments (RUN/report: metrics.md, .csv, .json, plots),
   and the report gets real_clips.md, a side-by-side video (real | generated) and a contact sheet.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from emodiff.experiments.real_clips import run_experiment
from emodiff.train.common import CONFIG_DIR


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sources", nargs="+", metavar="SRC", help="talking-head clips with speech, or folders of them")
    parser.add_argument("--out", type=Path, required=True, help="run folder (created, or continued when it exists)")
    parser.add_argument("--config", type=Path, default=CONFIG_DIR / "real_clips.yaml",
                        help="experiment config (default configs/real_clips.yaml)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="override config entries, e.g. denoiser.train.max_steps=100")
    parser.add_argument("--report", type=Path, help="also copy the report's summary, table, video and sheet here")


def run(args: argparse.Namespace) -> int:
    command = "emodiff real-clips " + " ".join(map(str, args.sources)) + f" --out {args.out}" + \
        (f" --report {args.report}" if args.report else "") + (f" --set {' '.join(args.set)}" if args.set else "")
    run_experiment(args.sources, args.out, args.config, args.set, args.report, command)
    return 0
