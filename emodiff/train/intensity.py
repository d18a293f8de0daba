"""Train the audio-to-intensity VAE on the store's pseudo intensities (Monte-Carlo ELBO, eq. 1).

The model is saved to OUTPUT_DIR/model.
"""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig

from emodiff.models.intensity_vae import IntensityVAE
from emodiff.train.common import TrainingRun, batches, check_finite, optimizer_step, sequence_dataset, warmup


def train(config: DictConfig, resume: str | None = None) -> Path:
    """Run (or resume) training as configured; returns the saved model folder."""
    dataset = sequence_dataset(config, require_audio=True)
    training = TrainingRun(config, "intensity", resume)
    model = IntensityVAE(audio_dim=dataset[0]["audio"].shape[-1], **config.model)
    tc = config.train
    optimizer = torch.optim.Adam(model.parameters(), lr=tc.learning_rate, betas=tuple(tc.adam_betas))
    model, optimizer = training.accelerator.prepare(model, optimizer)
    start = training.resume().step
    stream = batches(training.accelerator, dataset, tc.batch_size, config.seed, start, config.data.num_workers)
    for step in training.steps(start):
        batch = next(stream)
        terms = model(batch["intensity"], batch["audio"])
        loss = terms["recon"] + tc.kl_weight * warmup(step, tc.kl_warmup_steps) * terms["kl"]
        check_finite(training.accelerator, {"reconstruction loss": terms["recon"], "KL loss": terms["kl"]}, step)
        optimizer_step(training.accelerator, optimizer, loss, list(model.parameters()), tc.max_grad_norm, step)
        training.log(step, {"loss/recon": terms["recon"], "loss/kl": terms["kl"]}, show=("loss/recon", "loss/kl"))
        if training.checkpoint_due(step):
            training.save_checkpoint(step)
    return training.finish({"model": model})["model"]
