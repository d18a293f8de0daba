"""Train or fine-tune the super-resolution stage (RRDBNet ×2/×4, docs/design.md §5.4) on world renders or a store.

Pairs of a low-resolution input degraded as a sampled frame is and its high-resolution truth; L1 loss (ESRGAN's
pre-training objective) plus an optional PatchGAN loss. The data sources, degradations and outputs are described in
the command's help (emodiff/cli/train/super_resolution.py).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, Dataset

from emodiff.data.datasets import frames_to_tensor
from emodiff.data.store import ClipStore
from emodiff.files import write_json_atomic
from emodiff.data.synthetic import SyntheticWorld
from emodiff.errors import EmodiffError
from emodiff.metrics.super_resolution import sr_quality
from emodiff.models.rrdbnet import PatchDiscriminator, RRDBNet
from emodiff.train.common import (
    TrainingRun, batches, check_finite, optimizer_step, warmup,
)
from emodiff.train.readout import RenderedFaces, seed_of, augment, sample_faces

STAGE = "super-resolution"
_EVAL_STREAM = 98


class StoreFrames(Dataset):
    """Every frame of a clip store, as float (3, S, S) in [-1, 1]."""

    def __init__(self, store: ClipStore):
        self.clips = list(store.clips())
        self.index = [(c, t) for c, clip in enumerate(self.clips) for t in range(clip.n_frames)]
        if not self.index:
            raise EmodiffError(f"The store {store.root} has no frames to train super-resolution on.")

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        c, t = self.index[i]
        return {"images": frames_to_tensor(np.array(self.clips[c].frames[t]))}


def pairs(config: DictConfig, process_index: int, start: int, accelerator=None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless (clean low-resolution input, high-resolution truth) batches in [-1, 1] after the first `start`."""
    data, tc, scale = config.data, config.train, config.model.scale
    if data.source == "world":
        faces = RenderedFaces(data.world_seed, data.hr_size // scale, tc.batch_size, data.identities_per_batch,
                              data.expression_spread, stream_seed=config.seed, process_index=process_index,
                              start_step=start + 1, also_size=data.hr_size)
        for batch in DataLoader(faces, batch_size=None, num_workers=tc.num_workers):
            yield batch["images"], batch["also_images"]
    elif data.source == "store":
        if not data.get("store"):
            raise EmodiffError("data.source store needs a clip store; pass --store or set data.store.")
        dataset = StoreFrames(ClipStore.open(data.store))
        for batch in batches(accelerator, dataset, tc.batch_size, config.seed, start, tc.num_workers):
            truth = batch["images"]
            yield F.interpolate(truth, scale_factor=1 / scale, mode="area"), truth
    else:
        raise EmodiffError(f"data.source must be world or store, not {data.source!r}.")


def degrade(images: torch.Tensor, config: DictConfig, generator: torch.Generator) -> torch.Tensor:
    """The input degradations of `config.degrade` (blur, noise) on images in [-1, 1]."""
    return augment(images, config.degrade.blur, config.degrade.noise, 0.0, 0.0, generator)


def crop(low: torch.Tensor, truth: torch.Tensor, size: int | None,
         generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random aligned patches, `size` pixels wide in the truth (ESRGAN trains on patches), one per image;
    None keeps whole frames."""
    if not size or size >= truth.shape[-1]:
        return low, truth
    scale = truth.shape[-1] // low.shape[-1]
    if size % scale:
        raise EmodiffError(f"data.crop {size} is not a multiple of the scale {scale}.")
    small = size // scale
    corners = torch.randint(0, low.shape[-1] - small + 1, (len(low), 2), generator=generator).tolist()
    return (torch.stack([low[i, :, y:y + small, x:x + small] for i, (y, x) in enumerate(corners)]),
            torch.stack([truth[i, :, y * scale:(y + small) * scale, x * scale:(x + small) * scale]
                         for i, (y, x) in enumerate(corners)]))


def initial_model(config: DictConfig) -> RRDBNet:
    """`init_weights` (a basicsr / Real-ESRGAN .pth of scale `model.scale`) or a fresh RRDBNet of `model`."""
    if not config.get("init_weights"):
        return RRDBNet(**OmegaConf.to_container(config.model))
    model = RRDBNet.from_basicsr(config.init_weights).train()
    if model.config.scale != config.model.scale:
        raise EmodiffError(f"{config.init_weights} is a x{model.config.scale} model but model.scale is {config.model.scale}.")
    return model


@torch.no_grad()
def evaluate_super_resolution(model: RRDBNet, world_seed: int, hr_size: int, n_samples: int = 64,
                              expression_spread: float = 0.3) -> dict:
    """PSNR / SSIM of the model and of bicubic on `n_samples` clean renders of fresh identities of world
    `world_seed` (the input is the world's own low-resolution render, the truth its hr_size render)."""
    scale = model.config.scale
    rng = np.random.default_rng([world_seed, _EVAL_STREAM])
    faces = sample_faces(SyntheticWorld(world_seed, hr_size // scale), rng, n_samples, max(1, n_samples // 4),
                         expression_spread, also=SyntheticWorld(world_seed, hr_size))
    was_training = model.training
    model.eval()
    scores = sr_quality(model.upscale, faces["frames"], faces["also_frames"])
    model.train(was_training)
    return {**scores, "n_samples": n_samples, "world_seed": world_seed, "hr_size": hr_size, "scale": scale}


def train(config: DictConfig, resume: str | None = None) -> Path:
    """Run (or resume) the super-resolution training of `config`; returns <output_dir>/super_resolution."""
    training = TrainingRun(config, STAGE, resume)
    accelerator = training.accelerator
    tc = config.train
    model = initial_model(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=tc.learning_rate, betas=(0.9, 0.99))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup(s + 1, tc.warmup_steps) * (
        0.55 + 0.45 * math.cos(math.pi * min(s / tc.max_steps, 1.0))))
    model, optimizer, schedule = accelerator.prepare(model, optimizer, schedule)
    critic = critic_optimizer = None
    if tc.gan_weight > 0:
        critic = PatchDiscriminator(**OmegaConf.to_container(config.discriminator))
        critic_optimizer = torch.optim.Adam(critic.parameters(), lr=tc.learning_rate, betas=(0.9, 0.99))
        critic, critic_optimizer = accelerator.prepare(critic, critic_optimizer)
    start = training.resume().step
    stream = pairs(config, accelerator.process_index, start, accelerator)
    model.train()
    for step in training.steps(start):
        low, truth = (x.to(accelerator.device) for x in next(stream))
        generator = torch.Generator().manual_seed(seed_of(config.seed, accelerator.process_index, step))
        low, truth = crop(low, truth, config.data.get("crop"), generator)
        low = (degrade(low, config, generator) + 1) / 2
        truth = (truth + 1) / 2
        upscaled = model(low)
        l1 = F.l1_loss(upscaled.float(), truth)
        losses = {"loss/l1": l1}
        loss = l1
        if critic is not None:
            losses["loss/gan"] = F.softplus(-critic(upscaled)).mean()
            loss = loss + tc.gan_weight * losses["loss/gan"]
        check_finite(accelerator, {"super-resolution loss": loss}, step)
        optimizer_step(accelerator, optimizer, loss, list(model.parameters()), tc.max_grad_norm, step)
        schedule.step()
        if critic is not None:
            critic_optimizer.zero_grad(set_to_none=True)  # drop what the generator's adversarial loss left in D
            losses["loss/critic"] = (F.softplus(-critic(truth)).mean() + F.softplus(critic(upscaled.detach())).mean())
            check_finite(accelerator, {"critic loss": losses["loss/critic"]}, step)
            optimizer_step(accelerator, critic_optimizer, losses["loss/critic"], list(critic.parameters()),
                           tc.max_grad_norm, step)
        training.log(step, losses, show=tuple(losses))
        if training.checkpoint_due(step):
            training.save_checkpoint(step)
    path = training.finish({"super_resolution": model})["super_resolution"]
    if accelerator.is_main_process and config.data.source == "world":
        metrics = evaluate_super_resolution(accelerator.unwrap_model(model), config.data.world_seed + 1,
                                            config.data.hr_size, tc.eval_samples, config.data.expression_spread)
        write_json_atomic(path / "metrics.json", metrics)
        accelerator.print(f"super-resolution saved to {path}: PSNR {metrics['psnr']:.2f} dB "
                          f"(bicubic {metrics['psnr_bicubic']:.2f} dB) on world seed {metrics['world_seed']}")
    return path
