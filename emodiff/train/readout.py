"""Train the synthetic world's readout network on faces rendered on the fly (docs/design.md §11).

Batches of fresh random identities and expressions with light augmentation, evaluated on another world seed; the
command's help (emodiff/cli/train/readout.py) describes the run. Batches and augmentation are functions of the
step, so a resumed run is exact.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from emodiff.data.datasets import frames_to_tensor
from emodiff.data.labels import EMOTIONS, NEUTRAL
from emodiff.files import write_json_atomic
from emodiff.data.synthetic import EMOTION_DIRECTIONS, EXPRESSION_PARAMS, MOUTH_OPEN, SyntheticWorld
from emodiff.errors import EmodiffError
from emodiff.models.readout import ExpressionReadout
from emodiff.train.common import (
    CONFIG_DIR, TrainingRun, check_finite, optimizer_step, warmup,
)

DEFAULT_CONFIG = CONFIG_DIR / "readout.yaml"
_EVAL_STREAM = 99
_IDENTITY_RANGE = 2 ** 31


def sample_faces(world: SyntheticWorld, rng: np.random.Generator, n: int, n_identities: int,
                 expression_spread: float, also: SyntheticWorld | None = None) -> dict[str, np.ndarray]:
    """n rendered faces of `n_identities` random identities: frames (n, S, S, 3) uint8,
    expression (n, 8), emotion (n,), intensity k (n,) (0 for neutral); with `also` (the same world at
    another size) the same faces rendered by it too, as also_frames.

    e = k·d_emotion + N(0, σ²) per parameter with σ uniform in [0, spread] per face (from faces on the
    emotion lines to faces well off them), and mouth_open uniform in [0, 1] (closed a quarter of the time)."""
    emotion = rng.integers(0, len(EMOTIONS), n)
    k = np.where(emotion == NEUTRAL, 0.0, rng.uniform(0.0, 1.0, n))
    sigma = rng.uniform(0.0, expression_spread, (n, 1))
    expression = k[:, None] * EMOTION_DIRECTIONS[emotion] + sigma * rng.normal(size=(n, len(EXPRESSION_PARAMS)))
    expression[:, MOUTH_OPEN] = rng.uniform(0.0, 1.0, n) * (rng.uniform(size=n) > 0.25)
    owner = np.sort(rng.integers(0, n_identities, n))
    identities = rng.integers(0, _IDENTITY_RANGE, n_identities)
    faces = {"frames": _render_all(world, identities, owner, expression), "expression": expression.astype(np.float32),
             "emotion": emotion, "intensity": k.astype(np.float32)}
    if also is not None:
        faces["also_frames"] = _render_all(also, identities, owner, expression)
    return faces


def _render_all(world: SyntheticWorld, identities: np.ndarray, owner: np.ndarray, expression: np.ndarray) -> np.ndarray:
    """The faces of `sample_faces`: row j shows identity identities[owner[j]] with expression[j]."""
    return np.concatenate([world.render(world.identity(int(identities[i])), expression[owner == i])
                           for i in range(len(identities)) if np.any(owner == i)])


class RenderedFaces(IterableDataset):
    """An endless stream of batches from `sample_faces`, from `start_step` on. Batch s is a pure function
    of (stream_seed, process_index, s), and DataLoader workers take the steps in turn, so a resumed
    run sees exactly the batches an unbroken run would. With `also_size` each batch holds the same faces
    rendered at that size too (also_images), as the high-resolution truth of super-resolution training."""

    def __init__(self, world_seed: int, size: int, batch_size: int, identities_per_batch: int,
                 expression_spread: float, stream_seed: int, process_index: int = 0, start_step: int = 0,
                 also_size: int | None = None):
        self.world_seed, self.size, self.batch_size, self.also_size = world_seed, size, batch_size, also_size
        self.identities_per_batch, self.expression_spread = identities_per_batch, expression_spread
        self.stream_seed, self.process_index, self.start_step = stream_seed, process_index, start_step

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        worker = get_worker_info()
        first, every = (worker.id, worker.num_workers) if worker else (0, 1)
        world = SyntheticWorld(self.world_seed, self.size)
        also = SyntheticWorld(self.world_seed, self.also_size) if self.also_size else None
        for step in itertools.count(self.start_step + first, every):
            rng = np.random.default_rng([self.stream_seed, self.process_index, step])
            faces = sample_faces(world, rng, self.batch_size, self.identities_per_batch, self.expression_spread, also)
            yield {"images": frames_to_tensor(faces["frames"]),
                   **({"also_images": frames_to_tensor(faces["also_frames"])} if also else {}),
                   **{key: torch.from_numpy(faces[key]) for key in ("expression", "emotion", "intensity")}}


def augment(images: torch.Tensor, blur: float, noise: float, colour: float, shift: float,
            generator: torch.Generator) -> torch.Tensor:
    """Per-image random shift/scale (± `shift` of the width), Gaussian blur (σ up to `blur` pixels),
    gain/offset (± `colour`) and pixel noise (σ up to `noise`) on images in [-1, 1]."""
    b, c, h, w = images.shape

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=generator).to(images.device)

    theta = torch.zeros(b, 2, 3, device=images.device)
    scale = 1.0 + shift * (2 * rand(b) - 1)
    theta[:, 0, 0], theta[:, 1, 1] = scale, scale
    theta[:, :, 2] = 2 * shift * (2 * rand(b, 2) - 1)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    images = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
    sigma = (blur * rand(b)).clamp_min(1e-3)
    taps = torch.arange(-2, 3, device=images.device, dtype=images.dtype)
    kernel = torch.exp(-taps ** 2 / (2 * sigma[:, None] ** 2))
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (b·c, 5)
    x = images.reshape(1, b * c, h, w)
    x = F.conv2d(F.pad(x, (2, 2, 0, 0), mode="replicate"), kernel[:, None, None, :], groups=b * c)
    x = F.conv2d(F.pad(x, (0, 0, 2, 2), mode="replicate"), kernel[:, None, :, None], groups=b * c)
    images = x.reshape(b, c, h, w)
    gain = 1.0 + colour * (2 * rand(b, c, 1, 1) - 1)
    offset = colour * (2 * rand(b, c, 1, 1) - 1)
    images = images * gain + offset + noise * rand(b, 1, 1, 1) * torch.randn(images.shape, generator=generator).to(images.device)
    return images.clamp(-1.0, 1.0)


def emotion_weights(emotion: torch.Tensor, intensity: torch.Tensor, full_at: float) -> torch.Tensor:
    """Weight of each emotion label: 1 for neutral, k / full_at (at most 1) otherwise, since a
    face at low intensity barely shows its emotion."""
    return torch.where(emotion == NEUTRAL, torch.ones_like(intensity), (intensity / full_at).clamp(max=1.0))


@torch.no_grad()
def evaluate_readout(model: ExpressionReadout, world_seed: int, size: int, n_samples: int = 1024,
                     expression_spread: float = 0.3, clip_spread: float = 0.05) -> dict[str, Any]:
    """Held-out scores on fresh identities of world `world_seed`: R² per expression parameter on
    `n_samples` faces drawn as in training, and emotion accuracy on `n_samples` clip-like faces
    (spread up to `clip_spread`) that show their emotion at k ≥ 0.5, or are neutral."""
    world = SyntheticWorld(world_seed, size)
    rng = np.random.default_rng([world_seed, _EVAL_STREAM])
    n_identities = max(1, n_samples // 4)
    faces = sample_faces(world, rng, n_samples, n_identities, expression_spread)
    predicted, _ = model.read(faces["frames"])
    truth = faces["expression"]
    r2 = 1.0 - ((predicted - truth) ** 2).sum(0) / ((truth - truth.mean(0)) ** 2).sum(0)
    clips = sample_faces(world, rng, n_samples, n_identities, clip_spread)
    _, probabilities = model.read(clips["frames"])
    shown = (clips["intensity"] >= 0.5) | (clips["emotion"] == NEUTRAL)
    correct = probabilities.argmax(1) == clips["emotion"]
    return {
        "r2": {name: float(v) for name, v in zip(EXPRESSION_PARAMS, r2)},
        "emotion_accuracy_k_ge_0.5": float(correct[shown].mean()),
        "n_samples": n_samples, "world_seed": world_seed, "size": size,
    }


def train(config: DictConfig, resume: str | None = None) -> Path:
    """Run (or resume) the readout training of `config` on the shared `TrainingRun`; returns the saved
    model folder (<output_dir>/model, with metrics.json)."""
    if "steps" in config.train:
        raise EmodiffError("The readout config key train.steps is now train.max_steps, as in every stage.")
    training = TrainingRun(config, "readout", resume)
    accelerator = training.accelerator
    tc = config.train
    model = ExpressionReadout(**OmegaConf.to_container(config.model))
    size = config.world.get("size") or model.config.resolution
    optimizer = torch.optim.AdamW(model.parameters(), lr=tc.learning_rate, weight_decay=tc.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup(s + 1, tc.max_steps // 20) * (
        0.55 + 0.45 * math.cos(math.pi * min(s / tc.max_steps, 1.0))))
    model, optimizer, schedule = accelerator.prepare(model, optimizer, schedule)
    start = training.resume().step
    faces = RenderedFaces(config.world.seed, size, tc.batch_size, tc.identities_per_batch, tc.expression_spread,
                          stream_seed=config.seed, process_index=accelerator.process_index, start_step=start + 1)
    stream = iter(DataLoader(faces, batch_size=None, num_workers=tc.num_workers))
    aug = tc.augment
    model.train()
    for step in training.steps(start):
        batch = {k: v.to(accelerator.device) for k, v in next(stream).items()}
        generator = torch.Generator().manual_seed(seed_of(config.seed, accelerator.process_index, step))
        out = model(augment(batch["images"], aug.blur, aug.noise, aug.colour, aug.shift, generator))
        weight = emotion_weights(batch["emotion"], batch["intensity"], tc.emotion_full_at)
        expression_loss = F.mse_loss(out.expression.float(), batch["expression"])
        emotion_loss = (F.cross_entropy(out.emotion_logits.float(), batch["emotion"], reduction="none") * weight).sum() / weight.sum()
        loss = expression_loss + tc.emotion_weight * emotion_loss
        check_finite(accelerator, {"readout loss": loss}, step)
        optimizer_step(accelerator, optimizer, loss, list(model.parameters()), tc.max_grad_norm, step)
        schedule.step()
        training.log(step, {"loss/expression": expression_loss, "loss/emotion": emotion_loss},
                     show=("loss/expression", "loss/emotion"))
        if training.checkpoint_due(step):
            training.save_checkpoint(step)
    path = training.finish({"model": model})["model"]
    if accelerator.is_main_process:
        readout = accelerator.unwrap_model(model).eval()
        metrics = evaluate_readout(readout, config.world.seed + 1, size, tc.eval_samples, tc.expression_spread)
        write_json_atomic(path / "metrics.json", metrics)
        accelerator.print(f"readout saved to {path}: R² mouth_open {metrics['r2']['mouth_open']:.3f}, "
                          f"emotion accuracy (k ≥ 0.5) {metrics['emotion_accuracy_k_ge_0.5']:.3f}")
    return path


def seed_of(*numbers: int) -> int:
    """A 32-bit seed mixed from several integers (numpy SeedSequence)."""
    return int(np.random.SeedSequence(list(numbers)).generate_state(1)[0])
