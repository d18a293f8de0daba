"""Train the denoiser (UNet + ReferenceNet) on a clip store with the loss of eq. 16.

One `accelerate` loop driven by a YAML config (configs/denoiser_base.yaml, configs/denoiser_tiny.yaml):
mixed precision, gradient accumulation and checkpointing, EMA, AdamW with linear warm-up, condition
dropout for classifier-free guidance, atomic checkpoints (keep the last K) with exact resume,
TensorBoard logs, validation strips and a NaN/inf guard. The EMA weights are saved with
`save_pretrained` to <output-dir>/unet and <output-dir>/reference_net.

    emodiff train denoiser --config configs/denoiser_tiny.yaml --store STORE --output-dir DIR
    accelerate launch --config_file accelerate_config.yaml -m emodiff.train.denoiser --config ... --store ... --output-dir ...
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, set_seed
from diffusers.training_utils import EMAModel
from matplotlib import image as mpimg
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, RandomSampler
from tqdm.auto import tqdm

from emodiff.data.datasets import FrameDataset
from emodiff.data.store import write_json_atomic
from emodiff.diffusion.gaussian import GaussianDiffusion
from emodiff.diffusion.sampling import denoise_frames
from emodiff.diffusion.schedulers import make_scheduler
from emodiff.errors import EmodiffError
from emodiff.models.reference_net import ReferenceNet
from emodiff.models.unet import DenoisingUNet

CHECKPOINT = re.compile(r"^step_(\d+)$")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="YAML config, e.g. configs/denoiser_base.yaml")
    parser.add_argument("--store", required=True, help="clip store made by `emodiff prepare`")
    parser.add_argument("--output-dir", required=True, help="run folder: checkpoints/, logs/, validation/, final weights")
    parser.add_argument("--max-steps", type=int, help="override train.max_steps")
    parser.add_argument("--resume", help="'latest' or a checkpoint folder to continue from")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="override config entries, e.g. train.batch_size=4")


def load_config(path: str | Path, overrides: list[str] = ()) -> DictConfig:
    if not Path(path).is_file():
        raise EmodiffError(f"config file {path} does not exist.")
    return OmegaConf.merge(OmegaConf.load(path), OmegaConf.from_dotlist(list(overrides)))


def learning_rate(config: DictConfig, step: int) -> float:
    """AdamW learning rate at optimizer step `step`: linear warm-up, then constant."""
    return config.train.learning_rate * min(1.0, (step + 1) / max(1, config.train.warmup_steps))


def list_checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary folders of interrupted saves are ignored)."""
    folder = output_dir / "checkpoints"
    found = [p for p in folder.iterdir() if CHECKPOINT.match(p.name)] if folder.is_dir() else []
    return sorted(found, key=lambda p: int(CHECKPOINT.match(p.name).group(1)))


def resolve_resume(output_dir: Path, resume: str | None) -> Path | None:
    if resume is None:
        return None
    if resume == "latest":
        found = list_checkpoints(output_dir)
        return found[-1] if found else None
    if not (Path(resume) / "trainer_state.json").is_file():
        raise EmodiffError(f"{resume} is not a denoiser checkpoint (no trainer_state.json).")
    return Path(resume)


def save_checkpoint(accelerator: Accelerator, ema: EMAModel, output_dir: Path, step: int, keep: int) -> None:
    """accelerator.save_state + EMA (safetensors) + trainer_state.json into a temporary folder,
    renamed to checkpoints/step_N when complete; only the last `keep` are kept."""
    final = output_dir / "checkpoints" / f"step_{step:08d}"
    tmp = final.with_name(final.name + ".tmp-save")
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    if accelerator.is_main_process:
        save_file({str(i): p.detach().cpu().contiguous() for i, p in enumerate(ema.shadow_params)},
                  str(tmp / "ema.safetensors"))
        state = {"step": step, "ema_optimization_step": ema.optimization_step}
        write_json_atomic(tmp / "trainer_state.json", state)
        tmp.rename(final)
        for old in list_checkpoints(output_dir)[:-keep]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()


def load_checkpoint(accelerator: Accelerator, ema: EMAModel, folder: Path) -> int:
    """Restore models, optimizer, RNG states and EMA; returns the optimizer step of the checkpoint."""
    accelerator.load_state(str(folder))
    state = json.loads((folder / "trainer_state.json").read_text())
    shadow = load_file(str(folder / "ema.safetensors"))
    for i, p in enumerate(ema.shadow_params):
        p.data.copy_(shadow[str(i)].to(p.device))
    ema.optimization_step = state["ema_optimization_step"]
    return int(state["step"])


def non_finite(what: str, step: int) -> EmodiffError:
    return EmodiffError(f"the {what} became NaN/inf at step {step}; training stopped before updating the weights, "
                        f"so the checkpoints on disk are intact (lower train.learning_rate, or try mixed_precision: bf16).")


def compute_losses(batch: dict[str, torch.Tensor], unet: torch.nn.Module, reference_net: torch.nn.Module,
                   diffusion: GaussianDiffusion, config: DictConfig) -> dict[str, torch.Tensor]:
    """Batch means of the eq. 16 terms for random timesteps, noise and condition dropout."""
    x0 = batch["target"]
    b = x0.shape[0]
    t = torch.randint(0, diffusion.num_timesteps, (b,), device=x0.device)
    noise = torch.randn_like(x0)
    x_t = diffusion.q_sample(x0, t, noise)
    audio_keep = torch.rand(b, device=x0.device) >= config.train.audio_drop
    expression_keep = torch.rand(b, device=x0.device) >= config.train.expression_drop
    out = unet(x_t, t, identity=batch["identity"], motion=batch["motion"], audio=batch["audio"],
               expression=batch["expression"], reference_features=reference_net(batch["identity"]),
               emotion=batch["emotion"], intensity=batch["intensity"], audio_keep=audio_keep,
               expression_keep=expression_keep)
    d = config.diffusion
    losses = diffusion.training_losses(out.float(), x0, x_t, t, noise, lambda_vlb=d.lambda_vlb,
                                       mouth_mask=batch["mouth_mask"], eye_mask=batch["eye_mask"],
                                       lambda_lip=d.lambda_lip, lambda_eye=d.lambda_eye)
    return {k: v.mean() for k, v in losses.items()}


@torch.no_grad()
def write_validation_strip(unet: DenoisingUNet, reference_net: ReferenceNet, dataset: FrameDataset,
                           config: DictConfig, path: Path, device: torch.device) -> None:
    """Real frames (top row) and frames sampled with a few scheduler steps (bottom row) as one PNG."""
    n = config.validation.frames
    items = [dataset[int(i)] for i in np.linspace(0, len(dataset) - 1, n).astype(int)]
    batch = {k: torch.stack([item[k] for item in items]).to(device) for k in items[0]}
    scheduler = make_scheduler(config.validation.sampler, config.diffusion)
    sampled = denoise_frames(unet, scheduler, batch["identity"], batch["motion"], batch["audio"], batch["expression"],
                             reference_net(batch["identity"]), config.validation.steps,
                             generator=torch.Generator(device).manual_seed(0), emotion=batch["emotion"],
                             intensity=batch["intensity"])
    rows = [torch.cat(list(images), dim=2) for images in (batch["target"], sampled)]
    strip = ((torch.cat(rows, dim=1).permute(1, 2, 0).float().cpu().numpy() + 1) * 127.5).clip(0, 255)
    path.parent.mkdir(parents=True, exist_ok=True)
    mpimg.imsave(path, strip.astype(np.uint8))


def flat_hparams(config: DictConfig) -> dict[str, Any]:
    """Scalar config entries keyed by dotted name (TensorBoard hparams accept only scalars)."""
    flat = {}
    for section, values in OmegaConf.to_container(config).items():
        for key, value in (values.items() if isinstance(values, dict) else [("", values)]):
            flat[f"{section}.{key}".rstrip(".")] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return flat


def train(config: DictConfig, store: str | Path, output_dir: str | Path, resume: str | None = None) -> Path:
    """Run (or continue) training; returns the output folder holding unet/ and reference_net/."""
    output_dir = Path(output_dir)
    tc = config.train
    accelerator = Accelerator(
        mixed_precision=tc.mixed_precision,
        gradient_accumulation_steps=tc.gradient_accumulation_steps,
        log_with="tensorboard",
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "logs")),
    )
    set_seed(config.seed, device_specific=True)
    try:
        dataset = FrameDataset(store, window=config.data.window, resolution=config.data.resolution, seed=config.seed)
    except ValueError as err:
        raise EmodiffError(f"cannot train the denoiser on {store}: {err}.") from err
    first = dataset.clips[0]
    unet = DenoisingUNet(sample_size=config.data.resolution, window=config.data.window,
                         audio_dim=first.audio_feats.shape[1], expression_dim=first.expression.shape[1],
                         **OmegaConf.to_container(config.unet))
    reference_net = ReferenceNet.matching(unet)
    if tc.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
        reference_net.enable_gradient_checkpointing()
    parameters = list(unet.parameters()) + list(reference_net.parameters())
    ema = EMAModel(parameters, decay=tc.ema_decay)
    optimizer = torch.optim.AdamW(parameters, lr=tc.learning_rate, weight_decay=tc.weight_decay)
    # The data order depends only on (seed, epoch), so a resumed run sees the same batches.
    order = torch.Generator().manual_seed(config.seed)
    loader = DataLoader(dataset, batch_size=tc.batch_size, sampler=RandomSampler(dataset, generator=order),
                        num_workers=config.data.num_workers, drop_last=True,
                        generator=torch.Generator().manual_seed(config.seed))
    unet, reference_net, optimizer, loader = accelerator.prepare(unet, reference_net, optimizer, loader)
    ema.to(accelerator.device)
    if len(loader) == 0:
        raise EmodiffError(f"the store has {len(dataset)} frames, fewer than one batch of {tc.batch_size} per process.")
    diffusion = GaussianDiffusion.from_config(config.diffusion)

    if accelerator.is_main_process:
        (output_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        for stale in (output_dir / "checkpoints").glob("*.tmp-*"):
            shutil.rmtree(stale)
        OmegaConf.save(config, output_dir / "config.yaml.tmp-save")
        (output_dir / "config.yaml.tmp-save").replace(output_dir / "config.yaml")
    accelerator.wait_for_everyone()
    step = 0
    checkpoint = resolve_resume(output_dir, resume)
    if checkpoint is not None:
        step = load_checkpoint(accelerator, ema, checkpoint)
        accelerator.print(f"resumed from {checkpoint} at step {step}")
    elif resume is not None:
        accelerator.print(f"no checkpoint in {output_dir / 'checkpoints'} yet; starting from step 0")
    accelerator.init_trackers("denoiser", config=flat_hparams(config))

    micro_batches = step * tc.gradient_accumulation_steps
    epoch, skip = divmod(micro_batches, len(loader))
    progress = tqdm(total=tc.max_steps, initial=step, desc="denoiser", disable=not accelerator.is_local_main_process)
    while step < tc.max_steps:
        order.manual_seed(config.seed + epoch)
        for batch in (accelerator.skip_first_batches(loader, skip) if skip else loader):
            with accelerator.accumulate(unet, reference_net):
                losses = compute_losses(batch, unet, reference_net, diffusion, config)
                if not torch.isfinite(accelerator.gather(losses["loss"].detach()[None])).all():
                    raise non_finite("loss", step + 1)
                accelerator.backward(losses["loss"])
                if accelerator.sync_gradients:
                    norm = accelerator.clip_grad_norm_(parameters, tc.max_grad_norm)
                    # fp16's loss scaler skips overflowing steps by itself; elsewhere inf is fatal.
                    if tc.mixed_precision != "fp16" and not torch.isfinite(norm):
                        raise non_finite("gradient", step + 1)
                for group in optimizer.param_groups:
                    group["lr"] = learning_rate(config, step)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            if not accelerator.sync_gradients:
                continue
            step += 1
            ema.step(parameters)
            progress.update(1)
            if step % tc.log_every == 0 or step == tc.max_steps:
                logs = {f"loss/{k}": accelerator.reduce(v.detach(), "mean").item() for k, v in losses.items()}
                logs["lr"] = learning_rate(config, step - 1)
                accelerator.log(logs, step=step)
                if accelerator.is_main_process:
                    with open(output_dir / "train_log.jsonl", "a") as log:
                        log.write(json.dumps({"step": step, **logs}) + "\n")
                progress.set_postfix(loss=f"{logs['loss/loss']:.4f}")
            if step % tc.checkpoint_every == 0 or step == tc.max_steps:
                save_checkpoint(accelerator, ema, output_dir, step, tc.keep_checkpoints)
            if step % tc.validate_every == 0 and accelerator.is_main_process:
                ema.store(parameters)
                ema.copy_to(parameters)
                write_validation_strip(accelerator.unwrap_model(unet).eval(), accelerator.unwrap_model(reference_net).eval(),
                                       dataset, config, output_dir / "validation" / f"step_{step:08d}.png",
                                       accelerator.device)
                unet.train(), reference_net.train()
                ema.restore(parameters)
            if step >= tc.max_steps:
                break
        epoch, skip = epoch + 1, 0
    progress.close()
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        ema.copy_to(parameters)
        for name, model in (("unet", unet), ("reference_net", reference_net)):
            tmp = output_dir / f"{name}.tmp-save"
            accelerator.unwrap_model(model).save_pretrained(tmp)
            if (output_dir / name).exists():
                shutil.rmtree(output_dir / name)
            tmp.rename(output_dir / name)
    accelerator.end_training()
    return output_dir


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config, args.set)
    if args.max_steps is not None:
        config.train.max_steps = args.max_steps
    train(config, args.store, args.output_dir, resume=args.resume)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m emodiff.train.denoiser", description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except EmodiffError as err:
        print(f"emodiff: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
