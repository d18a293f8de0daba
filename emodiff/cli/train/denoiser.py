"""Train the denoiser (UNet + ReferenceNet) on a clip store with the loss of eq. 16.

One `accelerate` loop driven by a YAML config (configs/denoiser_base.yaml, configs/denoiser_tiny.yaml):
mixed precision, gradient accumulation and checkpointing, EMA, AdamW with linear warm-up, condition
dropout for classifier-free guidance, validation strips, and the shared run infrastructure of
`emodiff.train.common` (checkpoints with exact `--resume`, logs, NaN/inf guard). The EMA weights are
saved with `save_pretrained` to <output-dir>/unet and <output-dir>/reference_net. `init.weights` starts from a
trained denoiser instead of from scratch (fine-tuning), with the `init.fresh` modules left at their initialisation.

    emodiff train denoiser --config configs/denoiser_tiny.yaml --store STORE --output-dir DIR [--resume latest]
    accelerate launch --config_file accelerate_config.yaml -m emodiff train denoiser --config ... --store ... --output-dir ...
"""

from __future__ import annotations

import argparse

from emodiff.cli.train import add_training_arguments, config_of
from emodiff.train.denoiser import train


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_training_arguments(parser, "denoiser_base.yaml")


def run(args: argparse.Namespace) -> int:
    path = train(config_of(args), args.resume)
    print(f"denoiser saved to {path / 'unet'} and {path / 'reference_net'}")
    return 0
