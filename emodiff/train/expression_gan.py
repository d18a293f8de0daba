"""Train the expression generator against its global and local discriminators (EMOdiffhead §3.3).

Trains on windows of labelled clips of the configured MEAD levels (the strongest, 3, by default) and on every
neutral clip whatever its level: MEAD records neutral at level 1 only, and G must learn e_n = G(neutral, z) too.
Ablations: `model.use_local_discriminator=false` (no D_l), `model.global_discriminator.temporal=conv`
(no TCN). The generator is saved to OUTPUT_DIR/generator.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from emodiff.data.labels import EMOTIONS
from emodiff.data.store import Clip
from emodiff.errors import EmodiffError
from emodiff.models.expression_gan import (TEMPORAL_KINDS, ExpressionGenerator, GlobalDiscriminator,
                                             LocalDiscriminator)
from emodiff.train.common import TrainingRun, batches, check_finite, optimizer_step, sequence_dataset


def _bce(logits: torch.Tensor, real: bool) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, float(real)))


def discriminator_loss(d_global: GlobalDiscriminator, d_local: LocalDiscriminator | None, real: torch.Tensor,
                       fake: torch.Tensor, emotion: torch.Tensor) -> dict[str, torch.Tensor]:
    """Eq. 17 (D_g on whole sequences, plus its emotion prediction on real ones) and eq. 18 (D_l per
    frame, averaged over frames), as binary cross-entropies — the negated log-likelihoods of eq. 17–18."""
    real_logit, real_class = d_global(real, emotion)
    fake_logit, _ = d_global(fake.detach(), emotion)
    losses = {"global": _bce(real_logit, True) + _bce(fake_logit, False),
              "class": F.cross_entropy(real_class, emotion)}
    if d_local is not None:
        losses["local"] = _bce(d_local(real, emotion), True) + _bce(d_local(fake.detach(), emotion), False)
    return losses


def generator_loss(d_global: GlobalDiscriminator, d_local: LocalDiscriminator | None, real: torch.Tensor,
                   fake: torch.Tensor, emotion: torch.Tensor) -> dict[str, torch.Tensor]:
    """Eq. 19 in the non-saturating form: fool D_g (and be classified as y), fool D_l on every frame,
    and the MSE ‖Ê_y − E_y‖² to a real sequence of the same emotion (weighted by λ_MSE by the caller)."""
    fake_logit, fake_class = d_global(fake, emotion)
    losses = {"global": _bce(fake_logit, True), "class": F.cross_entropy(fake_class, emotion),
              "mse": F.mse_loss(fake, real)}
    if d_local is not None:
        losses["local"] = _bce(d_local(fake, emotion), True)
    return losses


def _weighted(losses: dict[str, torch.Tensor], weights: dict[str, float]) -> torch.Tensor:
    return sum(weights.get(name, 1.0) * value for name, value in losses.items())


def _named(model: str, losses: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"{model} {name} loss": value for name, value in losses.items()}


def train(config: DictConfig, resume: str | None = None) -> Path:
    """Run (or resume) adversarial training as configured; returns the saved generator folder."""
    mc, tc = config.model, config.train
    if mc.global_discriminator.temporal not in TEMPORAL_KINDS:
        raise EmodiffError(f"Unknown model.global_discriminator.temporal={mc.global_discriminator.temporal}; "
                           f"use one of: {', '.join(TEMPORAL_KINDS)}.")
    levels = config.data.levels

    def keep(clip: Clip) -> bool:
        return clip.emotion in EMOTIONS and (levels is None or clip.level in levels or clip.emotion == "neutral")

    dataset = sequence_dataset(config, keep=keep)
    training = TrainingRun(config, "expression", resume)
    dims = {"expression_dim": dataset[0]["expression"].shape[-1], "n_emotions": len(EMOTIONS)}
    generator = ExpressionGenerator(**dims, **mc.generator)
    d_global = GlobalDiscriminator(**dims, **mc.global_discriminator)
    discriminators = [d_global]
    if mc.use_local_discriminator:
        discriminators.append(LocalDiscriminator(**dims, **mc.local_discriminator))
    d_params = [p for d in discriminators for p in d.parameters()]
    betas = tuple(tc.adam_betas)
    opt_g = torch.optim.Adam(generator.parameters(), lr=tc.generator_lr, betas=betas)
    opt_d = torch.optim.Adam(d_params, lr=tc.discriminator_lr, betas=betas)
    accelerator = training.accelerator
    generator, opt_g, opt_d, *discriminators = accelerator.prepare(generator, opt_g, opt_d, *discriminators)
    d_global, d_local = discriminators[0], (discriminators[1] if len(discriminators) > 1 else None)
    weights = {"mse": tc.lambda_mse, "class": tc.class_weight, "local": tc.local_weight}

    start = training.resume().step
    stream = batches(accelerator, dataset, tc.batch_size, config.seed, start, config.data.num_workers)
    sample_noise = accelerator.unwrap_model(generator).sample_noise
    for step in training.steps(start):
        batch = next(stream)
        real, emotion = batch["expression"], batch["emotion"]
        fake = generator(emotion, sample_noise(real.shape[0], real.shape[1]))

        d_losses = discriminator_loss(d_global, d_local, real, fake, emotion)
        check_finite(accelerator, _named("discriminator", d_losses), step)
        optimizer_step(accelerator, opt_d, _weighted(d_losses, weights), d_params, tc.max_grad_norm, step)

        g_losses = generator_loss(d_global, d_local, real, fake, emotion)
        check_finite(accelerator, _named("generator", g_losses), step)
        optimizer_step(accelerator, opt_g, _weighted(g_losses, weights), list(generator.parameters()),
                       tc.max_grad_norm, step)
        opt_d.zero_grad(set_to_none=True)  # the generator's loss also reached the discriminators' parameters

        training.log(step, {**_named("discriminator", d_losses), **_named("generator", g_losses)},
                     show=("discriminator global loss", "generator global loss", "generator mse loss"))
        if training.checkpoint_due(step):
            training.save_checkpoint(step)
    return training.finish({"generator": generator})["generator"]
