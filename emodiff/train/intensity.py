"""Train the audio-to-intensity VAE on the store's pseudo intensities (Monte-Carlo ELBO, eq. 1).

  emodiff train intensity --store STORE [--config configs/intensity.yaml] [--output-dir DIR] [--set KEY=VALUE ...]
  accelerate launch -m emodiff.train.intensity --store STORE

Resumes exactly from the newest checkpoint in OUTPUT_DIR/checkpoints; the model is saved to OUTPUT_DIR/model.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from omegaconf import DictConfig

from emodiff.models.intensity_vae import IntensityVAE
from emodiff.train.common import (Checkpoints, add_training_arguments, batches, check_finite, load_config,
                                  optimizer_step, progress, run_as_module, save_model, sequence_dataset,
                                  start_run)


def train(config: DictConfig) -> Path:
    """Run (or resume) training as configured; returns the saved model folder."""
    out = Path(config.output_dir)
    accelerator = start_run(config)
    dataset = sequence_dataset(config, require_audio=True)
    model = IntensityVAE(audio_dim=dataset[0]["audio"].shape[-1], **config.model)
    tc = config.train
    optimizer = torch.optim.Adam(model.parameters(), lr=tc.learning_rate, betas=tuple(tc.adam_betas))
    model, optimizer = accelerator.prepare(model, optimizer)
    checkpoints = Checkpoints(accelerator, out / "checkpoints", tc.keep_checkpoints)
    start = checkpoints.resume()
    stream = batches(accelerator, dataset, tc.batch_size, config.seed, start, config.data.num_workers)
    bar = progress(accelerator, start, tc.max_steps, "intensity")
    for step in bar:
        batch = next(stream)
        terms = model(batch["intensity"], batch["audio"])
        kl_weight = tc.kl_weight * min(1.0, (step + 1) / max(tc.kl_warmup_steps, 1))
        loss = terms["recon"] + kl_weight * terms["kl"]
        check_finite({"reconstruction": terms["recon"], "KL": terms["kl"]}, step + 1)
        optimizer_step(accelerator, optimizer, loss, list(model.parameters()), tc.grad_clip)
        bar.set_postfix(recon=f"{terms['recon'].item():.3f}", kl=f"{terms['kl'].item():.3f}")
        checkpoints.after_step(step + 1, tc.checkpoint_every, tc.max_steps)
    return save_model(accelerator, model, out / "model")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_training_arguments(parser, "intensity.yaml")


def run(args: argparse.Namespace) -> int:
    path = train(load_config(args))
    print(f"intensity predictor saved to {path}")
    return 0


if __name__ == "__main__":
    run_as_module("intensity")
