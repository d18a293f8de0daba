"""Train the denoiser (UNet + ReferenceNet) on a clip store with the loss of eq. 16.

One `accelerate` loop driven by a YAML config on the shared run infrastructure of `emodiff.train.common`, with EMA
weights, AdamW with linear warm-up, condition dropout for classifier-free guidance and validation strips; the
command's help (emodiff/cli/train/denoiser.py) describes the run and its outputs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from accelerate.utils import extract_model_from_parallel
from diffusers.training_utils import EMAModel
from diffusers.utils import SAFETENSORS_WEIGHTS_NAME
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import load_file

from emodiff.control.intensity import IntensityMeasure
from emodiff.data.datasets import FrameDataset
from emodiff.data.store import ClipStore
from emodiff.diffusion.gaussian import GaussianDiffusion, config_betas, motion_frames
from emodiff.diffusion.sampling import denoise
from emodiff.diffusion.schedulers import make_scheduler
from emodiff.errors import EmodiffError
from emodiff.models.conditioning import WindowEncoder, uses_intensity
from emodiff.models.reference_net import ReferenceNet
from emodiff.models.unet import DenoisingUNet
from emodiff.train.common import TrainingRun, batches, check_finite, optimizer_step, save_image_rows, warmup


def compute_losses(batch: dict[str, torch.Tensor], unet: torch.nn.Module, reference_net: torch.nn.Module,
                   diffusion: GaussianDiffusion, config: DictConfig) -> dict[str, torch.Tensor]:
    """Batch means of the eq. 16 terms for random timesteps, noise, condition and motion-frame dropout; with an
    expression encoder that has `norm_loss` (renorm), "loss" also holds λ_norm·L_norm."""
    x0 = batch["target"]
    b = x0.shape[0]
    t = torch.randint(0, diffusion.num_timesteps, (b,), device=x0.device)
    noise = torch.randn_like(x0)
    x_t = diffusion.q_sample(x0, t, noise)
    audio_keep = torch.rand(b, device=x0.device) >= config.train.audio_drop
    expression_keep = torch.rand(b, device=x0.device) >= config.train.expression_drop
    # Motion-frame dropout and noise (beyond the paper): the identity frame in place of both motion frames, as for
    # the first frame at sampling time, so the mouth and the expression must come from the conditions; motion frames
    # noised to a random level s < motion_noise_max, s given to the UNet (sampling uses a fixed small level).
    dropped = torch.rand(b, device=x0.device) < config.train.motion_drop
    motion_noise = None  # off: no draw, so the paper's setting keeps its random stream
    if config.train.motion_noise_max:
        motion_noise = torch.randint(0, config.train.motion_noise_max, (b,), device=x0.device)
    noise_draw = None if motion_noise is None else torch.randn_like(batch["motion"])
    motion = motion_frames(diffusion, batch["motion"], batch["identity"], dropped, motion_noise, noise_draw)
    out = unet(x_t, t, identity=batch["identity"], motion=motion, audio=batch["audio"],
               expression=batch["expression"], reference_features=reference_net(batch["identity"]),
               emotion=batch["emotion"], intensity=batch.get("intensity"), audio_keep=audio_keep,
               expression_keep=expression_keep, motion_noise=motion_noise)
    d = config.diffusion
    losses = diffusion.training_losses(out.float(), x0, x_t, t, noise, lambda_vlb=d.lambda_vlb,
                                       mouth_mask=batch["mouth_mask"], eye_mask=batch["eye_mask"],
                                       lambda_lip=d.lambda_lip, lambda_eye=d.lambda_eye,
                                       min_snr_gamma=d.min_snr_gamma,
                                       prediction_type=d.get("prediction_type", "epsilon"))
    losses = {k: v.mean() for k, v in losses.items()}
    encoder = extract_model_from_parallel(unet).expression_embedding
    if hasattr(encoder, "norm_loss"):  # the renorm variant's L_norm (framewise intensity paper eq. 2)
        losses["norm"] = encoder.norm_loss(batch["emotion"])
        losses["loss"] = losses["loss"] + d.lambda_norm * losses["norm"]
    return losses


@torch.no_grad()
def write_validation_strip(unet: DenoisingUNet, reference_net: ReferenceNet, dataset: FrameDataset,
                           config: DictConfig, path: Path, device: torch.device) -> None:
    """Real frames (top row) and frames sampled with a few scheduler steps (bottom row) as one PNG."""
    n = config.validation.frames
    items = [dataset[int(i)] for i in np.linspace(0, len(dataset) - 1, n).astype(int)]
    batch = {k: torch.stack([item[k] for item in items]).to(device) for k in items[0]}
    scheduler = make_scheduler(config.validation.sampler, config_betas(config.diffusion), unet.config.prediction_type)
    conditions = {key: batch[key] for key in ("identity", "motion", "audio", "expression", "emotion", "intensity")
                  if key in batch}
    generator = torch.Generator(device).manual_seed(0)
    x = torch.randn(batch["identity"].shape, generator=generator, device=device)
    sampled = denoise(unet, scheduler, x, conditions, reference_net(batch["identity"]), config.validation.steps,
                      generator=generator)
    save_image_rows(path, [batch["target"], sampled])


def init_from_trained(modules: dict[str, torch.nn.Module], folder: str | Path, fresh: list[str]) -> int:
    """Copy a trained denoiser's weights (FOLDER/unet, FOLDER/reference_net) into `modules` (fine-tuning). Every
    parameter and buffer whose name starts with a `fresh` prefix keeps its initialisation; every other one must be in
    FOLDER with the same shape. Returns how many tensors were copied."""
    copied = 0
    for name, module in modules.items():
        path = Path(folder) / name / SAFETENSORS_WEIGHTS_NAME
        if not path.is_file():
            raise EmodiffError(f"init.weights: {path} is missing; point it at a finished `emodiff train denoiser` folder.")
        trained = load_file(path)
        state = module.state_dict()
        for key, value in state.items():
            if any(key.startswith(prefix) for prefix in fresh):
                continue
            if key not in trained or trained[key].shape != value.shape:
                found = tuple(trained[key].shape) if key in trained else "nothing"
                raise EmodiffError(f"init.weights: {name}.{key} is {tuple(value.shape)} here but {found} in {path}; "
                                   "match the architecture or list the prefix in init.fresh.")
            state[key] = trained[key]
            copied += 1
        module.load_state_dict(state)
    return copied


def train(config: DictConfig, resume: str | None = None) -> Path:
    """Run (or continue) training; returns the output folder holding unet/ and reference_net/."""
    tc = config.train
    try:
        store = ClipStore.open(config.data.store)
        measure = IntensityMeasure.from_store(store) if uses_intensity(config.unet.expression_encoder) else None
        dataset = FrameDataset(store, window=config.data.window, resolution=config.data.resolution,
                               seed=config.seed, identity_source=config.data.identity_source, intensity_measure=measure,
                               expression_smoothing=config.data.get("expression_smoothing", 0))
    except ValueError as err:
        raise EmodiffError(f"cannot train the denoiser on {config.data.store}: {err}.") from err
    training = TrainingRun(config, "denoiser", resume, gradient_accumulation_steps=tc.gradient_accumulation_steps)
    accelerator = training.accelerator
    first = dataset.clips[0]
    unet = DenoisingUNet(sample_size=config.data.resolution, window=config.data.window,
                         audio_dim=first.audio_feats.shape[1], expression_dim=first.expression.shape[1],
                         motion_noise_conditioning=tc.motion_noise_max > 0,
                         prediction_type=config.diffusion.get("prediction_type", "epsilon"),
                         **OmegaConf.to_container(config.unet))
    unet.audio_embedding.set_statistics(*dataset.feature_statistics("audio_feats"))
    if isinstance(unet.expression_embedding, WindowEncoder):  # the variants without an expression window have none
        unet.expression_embedding.set_statistics(*dataset.feature_statistics("expression"))
    reference_net = ReferenceNet.matching(unet)
    if config.init.weights and training.resume_from is None:  # before the EMA copy; a resumed run has its own
        copied = init_from_trained({"unet": unet, "reference_net": reference_net}, config.init.weights,
                                   list(config.init.fresh))
        accelerator.print(f"started from {config.init.weights}: {copied} tensors copied, {list(config.init.fresh)} fresh")
    if tc.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
        reference_net.enable_gradient_checkpointing()
    parameters = list(unet.parameters()) + list(reference_net.parameters())
    ema = EMAModel(parameters, decay=tc.ema_decay)
    optimizer = torch.optim.AdamW(parameters, lr=tc.learning_rate, weight_decay=tc.weight_decay)
    if config.unet.reference_levels:
        unet, reference_net, optimizer = accelerator.prepare(unet, reference_net, optimizer)
    else:  # "w/o ReferenceNet": it has no parameters, which DistributedDataParallel refuses to wrap
        unet, optimizer = accelerator.prepare(unet, optimizer)
        reference_net.to(accelerator.device)
    ema.to(accelerator.device)
    diffusion = GaussianDiffusion.from_config(config.diffusion)

    start, state, tensors = training.resume()
    if "ema" in tensors:
        for i, p in enumerate(ema.shadow_params):
            p.data.copy_(tensors["ema"][str(i)].to(p.device))
        ema.optimization_step = state["ema_optimization_step"]
    stream = batches(accelerator, dataset, tc.batch_size, config.seed, start * tc.gradient_accumulation_steps,
                     config.data.num_workers)
    for step in training.steps(start):
        lr = tc.learning_rate * warmup(step, tc.warmup_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        for _ in range(tc.gradient_accumulation_steps):
            with accelerator.accumulate(unet, reference_net):
                losses = compute_losses(next(stream), unet, reference_net, diffusion, config)
                check_finite(accelerator, {"loss": losses["loss"]}, step)
                optimizer_step(accelerator, optimizer, losses["loss"], parameters, tc.max_grad_norm, step)
        ema.step(parameters)
        training.log(step, {**{f"loss/{k}": v for k, v in losses.items()}, "lr": lr}, show=("loss/loss",))
        if training.checkpoint_due(step):
            training.save_checkpoint(step, state={"ema_optimization_step": ema.optimization_step},
                                     tensors={"ema": {str(i): p for i, p in enumerate(ema.shadow_params)}})
        if step % tc.validate_every == 0 and accelerator.is_main_process:
            ema.store(parameters)
            ema.copy_to(parameters)
            write_validation_strip(accelerator.unwrap_model(unet).eval(), accelerator.unwrap_model(reference_net).eval(),
                                   dataset, config, training.output_dir / "validation" / f"step_{step:08d}.png",
                                   accelerator.device)
            unet.train(), reference_net.train()
            ema.restore(parameters)
    ema.copy_to(parameters)
    training.finish({"unet": unet, "reference_net": reference_net})
    return training.output_dir
