"""Train the emotion classifier behind EmoAcc on the labelled clips of a clip store.

  emodiff train emotion-classifier --store STORE [--config configs/emotion_classifier.yaml] [--output-dir DIR] [--resume latest]
  accelerate launch -m emodiff train emotion-classifier --store STORE

The classifier is saved to OUTPUT_DIR/model (give that folder to `emodiff evaluate --emotion-classifier`),
the held-out clips' video accuracy to OUTPUT_DIR/validation.json.
"""

from __future__ import annotations

import argparse

from emodiff.cli.train import add_training_arguments, config_of
from emodiff.train.emotion_classifier import train


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_training_arguments(parser, "emotion_classifier.yaml")


def run(args: argparse.Namespace) -> int:
    path = train(config_of(args), args.resume)
    print(f"emotion classifier saved to {path}")
    return 0
