"""Train the expression generator against its global and local discriminators (EMOdiffhead §3.3).

  emodiff train expression --store STORE [--config configs/expression_gan.yaml] [--output-dir DIR] [--resume latest]
  accelerate launch -m emodiff train expression --store STORE

Trains on windows of labelled clips of the configured MEAD levels (the strongest, 3, by default) and on every
neutral clip whatever its level: MEAD records neutral at level 1 only, and G must learn e_n = G(neutral, z) too.
Ablations: `model.use_local_discriminator=false` (no D_l), `model.global_discriminator.temporal=conv`
(no TCN). The generator is saved to OUTPUT_DIR/generator.
"""

from __future__ import annotations

import argparse

from emodiff.cli.train import add_training_arguments, config_of
from emodiff.train.expression_gan import train


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_training_arguments(parser, "expression_gan.yaml")


def run(args: argparse.Namespace) -> int:
    path = train(config_of(args), args.resume)
    print(f"expression generator saved to {path}")
    return 0
