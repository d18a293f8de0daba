"""`emodiff train <stage>`: one module per training stage, and the flags they share (docs/design.md §1).

Every stage also runs under `accelerate launch [--config_file accelerate_config.yaml] -m emodiff train <stage> ...`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from omegaconf import DictConfig

from emodiff.train.common import CONFIG_DIR, training_config


def add_training_arguments(parser: argparse.ArgumentParser, default_config: str, store: bool = True,
                           outputs: str = "the final weights", set_example: str = "train.batch_size=4") -> None:
    """The arguments of every `emodiff train <stage>` (--store only for the stages that read a clip store)."""
    parser.add_argument("--config", type=Path, default=CONFIG_DIR / default_config,
                        help=f"YAML config (default configs/{default_config})")
    if store:
        parser.add_argument("--store", type=Path, help="clip store made by `emodiff prepare` (overrides data.store)")
    parser.add_argument("--output-dir", type=Path,
                        help=f"run folder: checkpoints/, logs/ and {outputs} (overrides output_dir)")
    parser.add_argument("--max-steps", type=int, help="override train.max_steps")
    parser.add_argument("--resume", metavar="latest|CHECKPOINT",
                        help="continue the run in --output-dir from its newest checkpoint, or from a checkpoint folder")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help=f"override config entries, e.g. {set_example}")


def config_of(args: argparse.Namespace, require_store: bool = True) -> DictConfig:
    """The stage's config: --config with --set, --store, --output-dir and --max-steps applied (`training_config`)."""
    return training_config(args.config, args.set, getattr(args, "store", None), args.output_dir, args.max_steps,
                           require_store)
