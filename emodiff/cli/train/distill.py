"""Distil a pipeline's guided denoiser into a student that samples in 1–4 steps (`emodiff train distill`).

The teacher (a pipeline folder) draws couplings: frame conditions from the clip store (as in training, the
motion frames noised to the pipeline's `motion_noise` level), noise x_T, and the frame x_0* its DDIM sampler makes
from them with `teacher_sampling.steps` steps and guidance (s_a, s_e). The student, a `DenoisingUNet` started from
the teacher's weights, predicts v (Salimans & Ho 2022) and learns the straight path between each coupled pair,

    x_t = α_t·x_0* + σ_t·ε_c,  ε_c = (x_T − α_T·x_0*)/σ_T,  v = α_t·ε_c − σ_t·x_0*,

at the timesteps of the DDIM grids of `student.steps` (T = the first of them). This is reflow (Liu et al. 2023)
on the teacher's own couplings, i.e. knowledge distillation of its sampler (Luhman & Luhman 2021) at every grid
point: along a straight path ε̂ stays ε_c, so a DDIM step from any grid point with the exact v lands on the path
again and 1, 2 and 4 steps all reproduce x_0*. The guidance is baked in (one forward per step, Meng et al. 2023).
Same accelerate loop, checkpoints, exact resume and EMA as the denoiser; the couplings are drawn once into
`couplings.safetensors` (a resumed run reuses them). The outputs are `unet/` (the EMA student),
`validation.json` (PSNR of the student at each step count and of the teacher at as few steps, both against the
teacher's full sampler on held-out couplings), `validation/step_N.png` and `pipeline/` (the teacher's pipeline with
the student and its step count).

    emodiff train distill --teacher PIPELINE --store STORE --output-dir DIR [--config configs/distill.yaml]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from emodiff.cli.train import add_training_arguments, config_of
from emodiff.train.distill import train


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_training_arguments(parser, "distill.yaml")
    parser.add_argument("--teacher", type=Path, help="pipeline folder to distil (overrides teacher)")


def run(args: argparse.Namespace) -> int:
    config = config_of(args)
    if args.teacher is not None:
        config.teacher = str(args.teacher)
    path = train(config, args.resume)
    report = json.loads((path / "validation.json").read_text())
    rows = ", ".join(f"{k} steps {v:.2f} dB (teacher {report['teacher_psnr'][k]:.2f})"
                     for k, v in report["student_psnr"].items())
    print(f"student saved to {path / 'unet'}, its pipeline to {path / 'pipeline'}; PSNR against the teacher's "
          f"{report['teacher_steps']}-step frames: {rows}")
    return 0
