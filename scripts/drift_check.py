"""Drift over a long video for a pipeline of the synthetic world: does the face hold for 30 seconds?

    python scripts/drift_check.py OUT [--checkpoint DIR] [--frames 750] [--window 50] [--k 0.5] [--identities 2]
                                      [--steps N] [--sampler ddim|ddpm|dpm++] [--cfg-audio S] [--cfg-exp S]

The synthetic run's drift measure (`emodiff.experiments.synthetic_run.drift_check`) on any pipeline folder trained
in the synthetic world (default: the bundled demo, emodiff/assets/demo): every emotion at intensity k for identities
the pipeline never saw, speaking one held-out clip of FRAMES frames (750 = 30 s at 25 fps), sampled with the
pipeline's own sampler, steps and guidance unless named, without its super-resolution; per-frame PSNR against the
world's true render. Writes
OUT/drift.json (the curve, the first and last WINDOW frames' means and their difference) and OUT/drift.png.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from emodiff.demo import bundled_checkpoint, demo_world  # noqa: E402
from emodiff.data.synthetic import trained_world, unseen_identities  # noqa: E402
from emodiff.diffusion.schedulers import SAMPLERS  # noqa: E402
from emodiff.experiments.synthetic_run import drift_check, drift_figure  # noqa: E402
from emodiff.files import write_json_atomic  # noqa: E402
from emodiff.pipeline import EmoDiffPipeline  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--checkpoint", type=Path, default=bundled_checkpoint())
    parser.add_argument("--frames", type=int, default=750)
    parser.add_argument("--window", type=int, default=50)
    parser.add_argument("--k", type=float, default=0.5)
    parser.add_argument("--identities", type=int, default=2)
    parser.add_argument("--steps", type=int)
    parser.add_argument("--sampler", choices=list(SAMPLERS))
    parser.add_argument("--cfg-audio", type=float)
    parser.add_argument("--cfg-exp", type=float)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    pipeline = EmoDiffPipeline.from_pretrained(args.checkpoint)
    pipeline.super_resolution = None  # the denoiser's own frames, at the size the world renders its truth
    world = demo_world(args.checkpoint, pipeline.settings["resolution"], pipeline.settings["fps"])
    identities = unseen_identities(trained_world(args.checkpoint) or {}, args.identities)
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    drift = drift_check(pipeline, world, identities, args.frames, args.window, args.k, args.steps, args.sampler,
                        args.seed, args.cfg_audio, args.cfg_exp, args.out)
    drift.update(checkpoint=str(args.checkpoint), identities=identities, seconds=time.perf_counter() - start,
                 sampling=pipeline.describe_sampling(args.sampler, args.steps, args.cfg_audio, args.cfg_exp))
    write_json_atomic(args.out / "drift.json", drift)
    fig = drift_figure(drift)
    fig.tight_layout()
    fig.savefig(args.out / "drift.png", dpi=80)
    print(f"{drift['sampling']}: PSNR {drift['psnr_first']:.2f} dB over the first {args.window} frames, "
          f"{drift['psnr_last']:.2f} dB over the last {args.window} of {args.frames}: drift {drift['drift_db']:.2f} dB "
          f"({len(identities)} identities × {drift['videos'] // len(identities)} emotions, {drift['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
