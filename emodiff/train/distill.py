"""Distil a pipeline's guided denoiser into a student that samples in 1–4 steps (`emodiff train distill`).

Reflow (Liu et al. 2023) on the teacher's own DDIM couplings (x_T, x_0*), the student predicting v (Salimans & Ho
2022) at the timesteps of the DDIM grids of `student.steps`, with the guidance baked in (Meng et al. 2023); the
method, its equations and outputs are described in the command's help (emodiff/cli/train/distill.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from diffusers.training_utils import EMAModel
from omegaconf import DictConfig
from safetensors.torch import load_file, save_file
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from emodiff.control.intensity import IntensityMeasure
from emodiff.data.datasets import FrameDataset
from emodiff.data.store import ClipStore
from emodiff.diffusion.gaussian import GaussianDiffusion, motion_frames
from emodiff.diffusion.schedulers import make_scheduler, scheduler_betas
from emodiff.errors import EmodiffError
from emodiff.files import atomic_path, write_json_atomic
from emodiff.metrics.quality import psnr
from emodiff.models.conditioning import uses_intensity
from emodiff.models.unet import DenoisingUNet
from emodiff.pipeline import EmoDiffPipeline
from emodiff.train.common import TrainingRun, batches, check_finite, optimizer_step, save_image_rows, warmup

CONDITIONS = ("identity", "motion", "motion_noise", "audio", "expression", "emotion", "intensity")


class Couplings(Dataset):
    """The teacher's (conditions, x_T, x_0*) triples as one dict of tensors indexed along the first axis."""

    def __init__(self, tensors: dict[str, torch.Tensor]):
        self.tensors = tensors

    def __len__(self) -> int:
        return len(self.tensors["noise"])

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {key: value[i] for key, value in self.tensors.items()}

    def split(self, n_validation: int) -> tuple["Couplings", "Couplings"]:
        """(training, held-out) with the last `n_validation` couplings held out."""
        cut = len(self) - n_validation
        return (Couplings({k: v[:cut] for k, v in self.tensors.items()}),
                Couplings({k: v[cut:] for k, v in self.tensors.items()}))


@torch.no_grad()
def draw_couplings(teacher: EmoDiffPipeline, dataset: FrameDataset, indices: np.ndarray, config: DictConfig,
                   seed: int, progress: bool = True) -> dict[str, torch.Tensor]:
    """Sample x_0* with the teacher for the frame conditions of `dataset[indices]` (see the module docstring)."""
    ts, dc = config.teacher_sampling, config.couplings
    device, dtype = teacher.device, teacher.unet.dtype
    generator = torch.Generator(device).manual_seed(seed)
    diffusion = GaussianDiffusion(scheduler_betas(teacher.scheduler))
    level = teacher.settings["motion_noise"]
    scheduler = teacher.make_sampler("ddim", ts.steps)
    out: dict[str, list[torch.Tensor]] = {}
    for start in tqdm(range(0, len(indices), dc.batch_size), desc="teacher couplings", disable=not progress):
        items = [dataset[int(i)] for i in indices[start:start + dc.batch_size]]
        batch = {k: torch.stack([item[k] for item in items]).to(device) for k in items[0]}
        b = len(items)
        identity = batch["identity"].to(dtype)
        # the first frames of a video have the identity frame as both motion frames
        dropped = torch.rand(b, generator=generator, device=device) < config.data.motion_drop
        levels = torch.full((b,), level, device=device)
        noise_draw = torch.randn(batch["motion"].shape, generator=generator, device=device) if level else None
        motion = motion_frames(diffusion, batch["motion"].to(dtype), identity, dropped, levels if level else None,
                               noise_draw)
        conditions = {"identity": identity, "motion": motion.to(dtype), "motion_noise": levels,
                      "audio": batch["audio"].to(dtype), "expression": batch["expression"].to(dtype),
                      "emotion": batch["emotion"],
                      "intensity": batch.get("intensity", torch.zeros(b, device=device)).to(dtype)}
        noise = torch.randn(identity.shape, generator=generator, device=device)
        sample = teacher.denoise(noise.to(dtype), conditions, teacher.reference_net(identity), scheduler, ts.steps,
                                 ts.cfg_audio, ts.cfg_expression)
        for key, value in {**conditions, "noise": noise, "sample": sample}.items():
            out.setdefault(key, []).append(value.cpu())
    return {key: torch.cat(values) for key, values in out.items()}


def load_or_draw_couplings(teacher: EmoDiffPipeline, config: DictConfig, training: TrainingRun) -> Couplings:
    """`couplings.safetensors` of the run folder, drawn first (each process its share, written atomically) if absent."""
    accelerator, path = training.accelerator, training.output_dir / "couplings.safetensors"
    if not path.is_file():
        try:
            store = ClipStore.open(config.data.store)
            measure = IntensityMeasure.from_store(store) if uses_intensity(teacher.unet.config.expression_encoder) else None
            dataset = FrameDataset(store, window=teacher.settings["window"], resolution=teacher.settings["resolution"],
                                   seed=config.seed, identity_source=config.data.identity_source,
                                   intensity_measure=measure)
        except ValueError as err:
            raise EmodiffError(f"cannot draw couplings from {config.data.store}: {err}.") from err
        count = config.couplings.count
        indices = np.random.default_rng(config.seed).choice(len(dataset), count, replace=count > len(dataset))
        rank, world = accelerator.process_index, accelerator.num_processes
        part = training.output_dir / f".couplings-{rank}.safetensors"
        save_file(draw_couplings(teacher, dataset, indices[rank::world], config, config.seed + rank,
                                 accelerator.is_local_main_process), str(part))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            parts = [load_file(str(training.output_dir / f".couplings-{r}.safetensors")) for r in range(world)]
            merged = {key: torch.cat([p[key] for p in parts]) for key in parts[0]}
            with atomic_path(path) as tmp:
                save_file(merged, str(tmp))
            for r in range(world):
                (training.output_dir / f".couplings-{r}.safetensors").unlink()
        accelerator.wait_for_everyone()
    return Couplings(load_file(str(path)))


def grid_timesteps(teacher: EmoDiffPipeline, step_counts: list[int]) -> torch.Tensor:
    """The union of the DDIM (trailing) timesteps of each step count, largest first."""
    scheduler = teacher.make_sampler("ddim", max(step_counts))
    grids = []
    for k in step_counts:
        scheduler.set_timesteps(k)
        grids.append(scheduler.timesteps)
    return torch.unique(torch.cat(grids)).flip(0)


def straight_path(batch: dict[str, torch.Tensor], t: torch.Tensor, t_start: int, alpha: torch.Tensor,
                  sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_t, v target) on the straight path from x_T (at `t_start`) to x_0* (module docstring); `alpha`, `sigma`
    are √ᾱ_t and √(1 − ᾱ_t) for every t."""
    x0, noise = batch["sample"], batch["noise"]
    eps = (noise - alpha[t_start] * x0) / sigma[t_start]
    a, s = alpha[t][:, None, None, None], sigma[t][:, None, None, None]
    return a * x0 + s * eps, a * eps - s * x0


def pixels(frames: torch.Tensor) -> np.ndarray:
    """(B,3,H,W) in [−1, 1] → (B,H,W,3) on the 0–255 scale of the quality metrics, unrounded."""
    return ((frames.float().cpu() + 1) * 127.5).permute(0, 2, 3, 1).numpy()


@torch.no_grad()
def compare_with_teacher(pipeline: EmoDiffPipeline, couplings: Couplings, step_counts: list[int], config: DictConfig,
                         ) -> tuple[dict[int, float], dict[int, torch.Tensor]]:
    """PSNR (dB) against the teacher's x_0* of `pipeline` sampling the held-out couplings with each step count."""
    ts = config.teacher_sampling
    device = pipeline.device
    batch = {k: v.to(device) for k, v in couplings.tensors.items()}
    conditions = {key: batch[key] for key in CONDITIONS}
    features = pipeline.reference_net(batch["identity"])
    scores, samples = {}, {}
    for k in step_counts:
        sample = pipeline.denoise(batch["noise"].to(pipeline.unet.dtype), conditions, features,
                                  pipeline.make_sampler("ddim", k), k, ts.cfg_audio, ts.cfg_expression)
        scores[k] = psnr(pixels(batch["sample"]), pixels(sample))
        samples[k] = sample
    return scores, samples


def write_validation_strip(path: Path, teacher_sample: torch.Tensor, samples: dict[int, torch.Tensor], n: int = 6) -> None:
    """Rows: the teacher's full sampler, then the student at each step count; columns: held-out couplings."""
    save_image_rows(path, [teacher_sample[:n]] + [samples[k][:n] for k in sorted(samples, reverse=True)])


def make_student(teacher: EmoDiffPipeline, config: DictConfig) -> DenoisingUNet:
    """A v-predicting copy of the teacher's UNet that records the guidance scales baked into it."""
    settings = {k: v for k, v in teacher.unet.config.items() if not k.startswith("_")}
    settings.update(prediction_type="v_prediction",
                    guidance_scales=[float(config.teacher_sampling.cfg_audio), float(config.teacher_sampling.cfg_expression)])
    student = DenoisingUNet(**settings)
    student.load_state_dict(teacher.unet.state_dict())
    return student


def train(config: DictConfig, resume: str | None = None) -> Path:
    """Run (or continue) distillation; returns the output folder holding unet/ and pipeline/."""
    if not config.get("teacher"):
        raise EmodiffError("No teacher pipeline given; pass --teacher PIPELINE_DIR or set teacher in the config.")
    teacher = EmoDiffPipeline.from_pretrained(config.teacher)
    if teacher.guidance_baked is not None:
        raise EmodiffError(f"The pipeline at {config.teacher} is already distilled; distil its teacher instead.")
    tc = config.train
    training = TrainingRun(config, "distill", resume, gradient_accumulation_steps=tc.gradient_accumulation_steps)
    accelerator = training.accelerator
    teacher.to(accelerator.device)
    couplings = load_or_draw_couplings(teacher, config, training)
    train_set, held_out = couplings.split(config.couplings.validation)
    student = make_student(teacher, config)
    reference_net = teacher.reference_net.requires_grad_(False)  # the teacher's identity features, frozen
    ema = EMAModel(list(student.parameters()), decay=tc.ema_decay)
    optimizer = torch.optim.AdamW(student.parameters(), lr=tc.learning_rate, weight_decay=tc.weight_decay)
    student, optimizer = accelerator.prepare(student, optimizer)
    ema.to(accelerator.device)
    diffusion = GaussianDiffusion(scheduler_betas(teacher.scheduler))
    alpha, sigma = (torch.as_tensor(a, dtype=torch.float32, device=accelerator.device)
                    for a in (diffusion.sqrt_alphas_cumprod, diffusion.sqrt_one_minus_alphas_cumprod))
    step_counts = sorted(config.student.steps)
    grid = grid_timesteps(teacher, step_counts).to(accelerator.device)
    unwrapped = accelerator.unwrap_model(student)
    student_scheduler = make_scheduler("ddim", scheduler_betas(teacher.scheduler),  # samples as validated
                                       unwrapped.config.prediction_type)
    pipeline = EmoDiffPipeline(**{**teacher.components(), "unet": unwrapped, "scheduler": student_scheduler},
                               **{**teacher.settings, "steps": config.student.default_steps, "guidance": None})

    def validate(step: int) -> dict[str, float]:
        ema.store(student.parameters())
        ema.copy_to(student.parameters())
        student.eval()
        scores, samples = compare_with_teacher(pipeline, held_out, step_counts, config)
        write_validation_strip(training.output_dir / "validation" / f"step_{step:08d}.png", held_out.tensors["sample"],
                               samples)
        student.train()
        ema.restore(student.parameters())
        return scores

    start, state, tensors = training.resume()
    if "ema" in tensors:
        for i, p in enumerate(ema.shadow_params):
            p.data.copy_(tensors["ema"][str(i)].to(p.device))
        ema.optimization_step = state["ema_optimization_step"]
    stream = batches(accelerator, train_set, tc.batch_size, config.seed, start * tc.gradient_accumulation_steps)
    for step in training.steps(start):
        lr = tc.learning_rate * warmup(step, tc.warmup_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        for _ in range(tc.gradient_accumulation_steps):
            with accelerator.accumulate(student):
                batch = next(stream)
                t = grid[torch.randint(0, len(grid), (len(batch["noise"]),), device=accelerator.device)]
                x_t, v = straight_path(batch, t, int(grid[0]), alpha, sigma)
                with torch.no_grad():
                    features = reference_net(batch["identity"])
                out = student(x_t, t, reference_features=features, **{key: batch[key] for key in CONDITIONS})
                loss = torch.nn.functional.mse_loss(out[:, :3].float(), v)
                check_finite(accelerator, {"loss": loss}, step)
                optimizer_step(accelerator, optimizer, loss, list(student.parameters()), tc.max_grad_norm, step)
        ema.step(student.parameters())
        training.log(step, {"loss/v": loss, "lr": lr}, show=("loss/v",))
        if training.checkpoint_due(step):
            training.save_checkpoint(step, state={"ema_optimization_step": ema.optimization_step},
                                     tensors={"ema": {str(i): p for i, p in enumerate(ema.shadow_params)}})
        if step % tc.validate_every == 0 and accelerator.is_main_process:
            scores = validate(step)
            training.log(step, {f"val/psnr_{k}_steps": v for k, v in scores.items()})
    ema.copy_to(student.parameters())
    student.eval()
    paths = training.finish({"unet": student})
    if accelerator.is_main_process:
        scores, samples = compare_with_teacher(pipeline, held_out, step_counts, config)
        write_validation_strip(training.output_dir / "validation" / "final.png", held_out.tensors["sample"], samples)
        baseline, _ = compare_with_teacher(teacher, held_out, step_counts, config)
        report = {"student_psnr": scores, "teacher_psnr": baseline, "teacher_steps": int(config.teacher_sampling.steps),
                  "held_out_couplings": len(held_out)}
        write_json_atomic(training.output_dir / "validation.json", report)
        pipeline.unet = DenoisingUNet.from_pretrained(paths["unet"]).eval()
        pipeline.save_pretrained(training.output_dir / "pipeline")
    return training.output_dir
