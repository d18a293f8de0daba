"""Train or fine-tune the super-resolution stage (RRDBNet ×2/×4, docs/design.md §5.4) on world renders or a store.

    emodiff train super-resolution [--config configs/super_resolution.yaml] [--store STORE] [--output-dir DIR]
                                   [--resume latest] [--set key=value ...]
    accelerate launch -m emodiff train super-resolution --config configs/super_resolution.yaml

Pairs (low-resolution input, high-resolution truth):
- `data.source: world` — the synthetic world (docs/design.md §11) renders every face twice, at the pipeline's size
  (hr_size / scale, the frames the denoiser makes) and at hr_size: exact truth, fresh identities and
  expressions every batch (`emodiff.train.readout.RenderedFaces`).
- `data.source: store` — the frames of a clip store are the truth and their area-downsampled copies the input.
The input is then degraded as a sampled frame is: Gaussian blur (σ up to `degrade.blur` input pixels) and
Gaussian pixel noise (σ up to `degrade.noise`), per image (`emodiff.train.readout.augment`).
The loss is L1 (ESRGAN's pre-training objective), plus `train.gan_weight` × the non-saturating GAN loss of a
PatchGAN (`PatchDiscriminator`) when that weight is > 0. `init_weights` starts from a released Real-ESRGAN
`.pth` (its architecture then replaces `model`). The model is saved into <output_dir>/super_resolution, a
pipeline component (`emodiff assemble --super-resolution DIR`), next to metrics.json: PSNR / SSIM of the model
and of bicubic on faces of another world seed. Checkpoints, logs and exact resume are those of the shared
`emodiff.train.common.TrainingRun`; batches and degradations are functions of the step.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from emodiff.cli.train import add_training_arguments, config_of
from emodiff.train.super_resolution import train


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_training_arguments(parser, "super_resolution.yaml")
    parser.add_argument("--init-weights", type=Path,
                        help="start from a Real-ESRGAN .pth (RealESRGAN_x4plus.pth / _x2plus.pth; overrides init_weights)")


def run(args: argparse.Namespace) -> int:
    config = config_of(args, require_store=False)  # rendered pairs need no store
    if args.store is not None:
        config.data.source = "store"
    if args.init_weights is not None:
        config.init_weights = str(args.init_weights)
    train(config, args.resume)
    return 0
