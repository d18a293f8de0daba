"""Train the audio-to-intensity VAE on the store's pseudo intensities (Monte-Carlo ELBO, eq. 1).

  emodiff train intensity --store STORE [--config configs/intensity.yaml] [--output-dir DIR] [--resume latest]
  accelerate launch -m emodiff train intensity --store STORE

The model is saved to OUTPUT_DIR/model.
"""

from __future__ import annotations

import argparse

from emodiff.cli.train import add_training_arguments, config_of
from emodiff.train.intensity import train


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_training_arguments(parser, "intensity.yaml")


def run(args: argparse.Namespace) -> int:
    path = train(config_of(args), args.resume)
    print(f"intensity predictor saved to {path}")
    return 0
