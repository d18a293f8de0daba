"""Pieces shared by the sequence-model training loops (expression GAN, intensity VAE).

- `load_config`: a YAML config plus `key=value` overrides (OmegaConf).
- `batches`: an endless, resumable stream of batches: the order of every epoch is fixed by
  (seed, epoch), so a run resumed at step s sees exactly the batches an unbroken run would.
- `Checkpoints`: accelerate `save_state` / `load_state` written atomically (temporary folder renamed),
  keeping the last K; the step counter travels inside the checkpoint.
- `check_finite`, `save_model`: stop on NaN/inf with the step number; atomic `save_pretrained`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Callable, Iterator

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

from emodiff.data.datasets import SequenceDataset
from emodiff.data.store import Clip, ClipStore
from emodiff.errors import EmodiffError

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
_STEP_FILE = "training_step.json"


def add_training_arguments(parser: argparse.ArgumentParser, default_config: str) -> None:
    """Arguments common to the stages (the same names as `emodiff train denoiser`)."""
    parser.add_argument("--config", type=Path, default=CONFIG_DIR / default_config, help="YAML config")
    parser.add_argument("--store", type=Path, help="clip store made by `emodiff prepare` (overrides data.store)")
    parser.add_argument("--output-dir", type=Path,
                        help="run folder: checkpoints/ and the final weights (overrides output_dir); "
                             "training resumes from its newest checkpoint")
    parser.add_argument("--max-steps", type=int, help="override train.max_steps")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="override config entries, e.g. train.batch_size=4")


def load_config(args: argparse.Namespace) -> DictConfig:
    """The YAML config of `args.config` with `--set`, `--store`, `--output-dir` and `--max-steps` applied."""
    if not Path(args.config).is_file():
        raise EmodiffError(f"Config file {args.config} does not exist.")
    config = OmegaConf.load(args.config)
    try:
        config = OmegaConf.merge(config, OmegaConf.from_dotlist(list(args.set)))
    except Exception as err:  # omegaconf raises several error types for one bad override
        raise EmodiffError(f"Bad config override in {args.set}: {err}.") from None
    if args.store is not None:
        config.data.store = str(args.store)
    if args.output_dir is not None:
        config.output_dir = str(args.output_dir)
    if args.max_steps is not None:
        config.train.max_steps = args.max_steps
    if not config.data.get("store"):
        raise EmodiffError("No clip store given; pass --store or set data.store in the config.")
    return config


class EpochShuffle(Sampler[int]):
    """A permutation of range(n) fixed by (seed, epoch)."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=generator).tolist())


def batches(accelerator: Accelerator, dataset: Dataset, batch_size: int, seed: int, start_step: int,
            num_workers: int = 0) -> Iterator[dict[str, torch.Tensor]]:
    """Endless batches from `start_step` on (one batch per process per step, last partial batch dropped)."""
    # The loader's own generator: starting an epoch then draws no number from the global RNG, whose
    # state (restored on resume) must depend on the step only.
    loader = accelerator.prepare(DataLoader(dataset, batch_size=batch_size, sampler=EpochShuffle(len(dataset), seed),
                                            drop_last=True, num_workers=num_workers,
                                            generator=torch.Generator().manual_seed(seed)))
    per_epoch = len(loader)
    if per_epoch == 0:
        raise EmodiffError(f"The dataset has {len(dataset)} windows, fewer than one batch of {batch_size} per process.")
    epoch, skip = divmod(start_step, per_epoch)
    while True:
        epoch_loader = accelerator.skip_first_batches(loader, skip) if skip else loader
        epoch_loader.set_epoch(epoch)
        yield from epoch_loader
        epoch, skip = epoch + 1, 0


class Checkpoints:
    """Atomic accelerate checkpoints `<root>/checkpoint-<step>`, keeping the newest `keep`."""

    def __init__(self, accelerator: Accelerator, root: str | Path, keep: int = 3):
        self.accelerator, self.root, self.keep = accelerator, Path(root), keep

    def all(self) -> list[Path]:
        found = self.root.glob("checkpoint-*") if self.root.is_dir() else []
        return sorted((p for p in found if (p / _STEP_FILE).is_file()), key=lambda p: int(p.name.split("-")[1]))

    def save(self, step: int) -> Path:
        final = self.root / f"checkpoint-{step}"
        tmp = self.root / f".checkpoint-{step}.tmp-{os.getpid()}"
        if self.accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        self.accelerator.wait_for_everyone()
        self.accelerator.save_state(str(tmp))
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            (tmp / _STEP_FILE).write_text(json.dumps({"step": step}))
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            for old in self.all()[:-self.keep]:
                shutil.rmtree(old, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        return final

    def after_step(self, step: int, every: int, last: int) -> None:
        """Save after `step` steps when it is a multiple of `every` or the last step."""
        if step % every == 0 or step == last:
            self.save(step)

    def resume(self) -> int:
        """Load the newest checkpoint (models, optimisers, RNG states) and return its step; 0 if none."""
        if self.accelerator.is_main_process:
            for stale in self.root.glob(".checkpoint-*.tmp-*"):  # left by a run killed while saving
                shutil.rmtree(stale, ignore_errors=True)
        found = self.all()
        if not found:
            return 0
        self.accelerator.load_state(str(found[-1]))
        return int(json.loads((found[-1] / _STEP_FILE).read_text())["step"])


def check_finite(losses: dict[str, torch.Tensor], step: int) -> None:
    """Stop before the update of step `step` (counted from 1) when a loss is NaN or infinite, so the
    checkpoints on disk stay intact."""
    for name, value in losses.items():
        if not torch.isfinite(value).all():
            raise EmodiffError(f"Training stopped: the {name} loss became {value.item()} at step {step}; the "
                               "checkpoints are intact (check the data or lower the learning rate, then resume).")


def optimizer_step(accelerator: Accelerator, optimizer: torch.optim.Optimizer, loss: torch.Tensor,
                   parameters: list[torch.nn.Parameter], grad_clip: float) -> None:
    """Backward of `loss`, gradient-norm clipping of `parameters`, one optimiser step."""
    optimizer.zero_grad(set_to_none=True)
    accelerator.backward(loss)
    accelerator.clip_grad_norm_(parameters, grad_clip)
    optimizer.step()


def save_model(accelerator: Accelerator, model: torch.nn.Module, path: str | Path) -> Path:
    """`save_pretrained` of the unwrapped model into a temporary folder, renamed to `path`."""
    path = Path(path)
    if accelerator.is_main_process:
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        accelerator.unwrap_model(model).save_pretrained(tmp)
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    accelerator.wait_for_everyone()
    return path


def start_run(config: DictConfig) -> Accelerator:
    """The accelerator of a run, with the global seed set (the RNG states then travel in checkpoints)."""
    accelerator = Accelerator(mixed_precision=config.mixed_precision)
    set_seed(config.seed)
    return accelerator


def sequence_dataset(config: DictConfig, require_audio: bool = False,
                     keep: Callable[[Clip], bool] | None = None) -> SequenceDataset:
    """`SequenceDataset` windows of `config.data` (window, stride) over the store, with a clear error when empty."""
    store = ClipStore.open(config.data.store)
    try:
        return SequenceDataset(store, length=config.data.window, stride=config.data.stride,
                               require_audio=require_audio, keep=keep)
    except ValueError as err:
        raise EmodiffError(f"Nothing to train on: {err}.") from None


def progress(accelerator: Accelerator, start: int, total: int, stage: str) -> tqdm:
    """A tqdm bar over the steps start..total (main process only)."""
    return tqdm(range(start, total), initial=start, total=total, desc=stage,
                disable=not accelerator.is_main_process, dynamic_ncols=True)


def run_as_module(stage: str) -> None:
    """`python -m emodiff.train.<stage> ARGS` = `emodiff train <stage> ARGS` (same errors and exit codes)."""
    from emodiff.cli import main

    sys.exit(main(["train", stage, *sys.argv[1:]]))
