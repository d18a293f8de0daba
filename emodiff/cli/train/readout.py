"""Train the synthetic world's readout network on faces rendered on the fly (docs/design.md §11).

    emodiff train readout [--config configs/readout.yaml] [--output-dir DIR] [--resume latest] [--set key=value ...]
    accelerate launch -m emodiff train readout --config configs/readout.yaml

Every batch shows fresh random identities with random expressions: an emotion at a random
intensity k, a random mouth opening, and Gaussian spread on all eight parameters so each one is
learned on its own. Light augmentation (blur, noise, colour, small shifts) makes the readout
robust to imperfect generated frames. The model is evaluated on identities of another world seed
(held out) and saved with `save_pretrained` into <output_dir>/model, next to metrics.json (R² per
parameter, emotion accuracy at k ≥ 0.5). Checkpoints, logs and resume are those of the shared
`emodiff.train.common.TrainingRun`; batches and augmentation are functions of the step, so a
resumed run is exact.
"""

from __future__ import annotations

import argparse

from emodiff.cli.train import add_training_arguments, config_of
from emodiff.train.readout import train


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_training_arguments(parser, "readout.yaml", store=False, outputs="model/", set_example="train.batch_size=32")


def run(args: argparse.Namespace) -> int:
    train(config_of(args, require_store=False), args.resume)
    return 0
