"""Report library versions, the compute device, optional backends and weight files (always exits 0).

Weight files come from flags or, when a flag is absent, from these environment variables:
EMODIFF_DECA_MODEL (deca_model.tar), EMODIFF_FLAME_MODEL (FLAME generic_model.pkl),
EMODIFF_AUDIO_MODEL (a local hubert / wav2vec2 folder), EMODIFF_SR_WEIGHTS (RealESRGAN_x4plus.pth or _x2plus.pth).
"""

from __future__ import annotations

import argparse

from emodiff.doctor import WEIGHT_FILES, report

def add_arguments(parser: argparse.ArgumentParser) -> None:
    for name, (env, source) in WEIGHT_FILES.items():
        parser.add_argument(f"--{name.replace('_', '-')}", metavar="PATH", help=f"{source} (default: ${env})")


def run(args: argparse.Namespace) -> int:
    print("\n".join(report({name: getattr(args, name) for name in WEIGHT_FILES})))
    return 0
