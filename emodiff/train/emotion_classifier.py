"""Train the emotion classifier behind EmoAcc on the labelled clips of a clip store.

Checkpoints (accelerate state: model, optimizer, RNGs) go to `<output_dir>-checkpoints/step-<n>` every
`checkpoint_every` steps and at the end; a rerun resumes from the newest one on the same batches.

    emodiff train emotion-classifier --config configs/emotion_classifier.yaml [--store S] [--output-dir D]
    accelerate launch -m emodiff.train.emotion_classifier --config configs/emotion_classifier.yaml
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from emodiff.data.datasets import emotion_label, frames_to_tensor
from emodiff.data.store import ClipStore, write_json_atomic
from emodiff.errors import EmodiffError
from emodiff.metrics.emotion import EmotionClassifier, emotion_accuracy, frame_logits


class LabelledFrames(Dataset):
    """(image in [-1, 1] (3, R, R), emotion index) for every `stride`-th frame of the given clips; with
    `mirrored`, items n..2n−1 are the same frames flipped left–right (augmentation without random state)."""

    def __init__(self, store: ClipStore, clip_ids: list[str], resolution: int, stride: int, mirrored: bool):
        self.clips = [store.clip(i) for i in clip_ids]
        self.index = [(c, t) for c, clip in enumerate(self.clips) for t in range(0, clip.n_frames, stride)]
        self.resolution, self.mirrored = resolution, mirrored

    def __len__(self) -> int:
        return len(self.index) * (2 if self.mirrored else 1)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        c, t = self.index[i % len(self.index)]
        image = frames_to_tensor(self.clips[c].frames[t], self.resolution)
        return (image.flip(-1) if i >= len(self.index) else image), emotion_label(self.clips[c])


def split_labelled_clips(store: ClipStore, val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Labelled clip ids split by clip into (train, validation)."""
    ids = [i for i in store.clip_ids() if store.clip(i).emotion is not None]
    if not ids:
        raise EmodiffError(f"The store {store.root} has no clips with an emotion label to train on.")
    order = np.random.default_rng(seed).permutation(len(ids))
    n_val = int(round(val_fraction * len(ids))) if len(ids) > 1 else 0
    return [ids[k] for k in order[n_val:]], [ids[k] for k in order[:n_val]]


def epoch_batches(n_items: int, batch_size: int, epoch: int, seed: int, rank: int, world: int) -> list[list[int]]:
    """This process's index batches of one epoch: a permutation seeded by (seed, epoch), cut into full
    batches of world × batch_size and shared out by rank — a resumed run replays exactly the same batches."""
    order = torch.randperm(n_items, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch)).tolist()
    step = batch_size * world
    if n_items < step:
        raise EmodiffError(f"The store has {n_items} training frames, fewer than one batch of {step}.")
    return [order[s + rank * batch_size:s + (rank + 1) * batch_size] for s in range(0, n_items - step + 1, step)]


def latest_checkpoint(folder: Path) -> Path | None:
    """The newest complete `step-<n>` checkpoint folder, or None."""
    done = sorted(folder.glob("step-*")) if folder.is_dir() else []
    return done[-1] if done else None


def save_checkpoint(accelerator: Accelerator, folder: Path, step: int, keep: int) -> None:
    """accelerate state (model, optimizer, RNGs) under a temporary name, renamed when complete; keeps `keep`."""
    if accelerator.is_main_process:
        folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".step-{step:08d}.tmp"
    accelerator.save_state(str(tmp))
    if accelerator.is_main_process:
        os.replace(tmp, folder / f"step-{step:08d}")
        for old in sorted(folder.glob("step-*"))[:-keep]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()


def train(config: OmegaConf) -> Path:
    """Run the training loop of `config`, resuming from its last checkpoint; returns the classifier folder."""
    accelerator = Accelerator()
    cfg = config.train
    torch.manual_seed(cfg.seed)
    store = ClipStore.open(config.store)
    train_ids, val_ids = split_labelled_clips(store, cfg.val_fraction, cfg.seed)
    model = EmotionClassifier(resolution=config.model.resolution, channels=tuple(config.model.channels),
                              dropout=config.model.dropout)
    data = LabelledFrames(store, train_ids, config.model.resolution, cfg.frame_stride, mirrored=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    model, optimizer = accelerator.prepare(model, optimizer)
    per_epoch = epoch_batches(len(data), cfg.batch_size, 0, cfg.seed, accelerator.process_index,
                              accelerator.num_processes)
    out = Path(config.output_dir)
    checkpoints = out.with_name(out.name + "-checkpoints")
    step = 0
    resume = latest_checkpoint(checkpoints)
    if resume is not None:
        accelerator.load_state(str(resume))
        step = int(resume.name.split("-")[1])
    progress = tqdm(total=cfg.steps, initial=step, desc="emotion-classifier", disable=not accelerator.is_main_process)
    while step < cfg.steps:
        epoch, done_in_epoch = divmod(step, len(per_epoch))
        batches = epoch_batches(len(data), cfg.batch_size, epoch, cfg.seed, accelerator.process_index,
                                accelerator.num_processes)[done_in_epoch:]
        # own generator: creating the iterator must not draw from the global RNG that a checkpoint restores
        loader = DataLoader(data, batch_sampler=batches, num_workers=int(cfg.get("num_workers", 0)),
                            generator=torch.Generator().manual_seed(epoch))
        for images, labels in loader:
            images, labels = images.to(accelerator.device), labels.to(accelerator.device)
            loss = torch.nn.functional.cross_entropy(model(images), labels)
            if not torch.isfinite(loss):
                raise EmodiffError(f"The loss became {loss.item()} at step {step}; nothing was saved.")
            optimizer.zero_grad(set_to_none=True)
            accelerator.backward(loss)
            optimizer.step()
            step += 1
            progress.update(1)
            if step % cfg.log_every == 0:
                progress.set_postfix(loss=f"{loss.item():.3f}")
            if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                save_checkpoint(accelerator, checkpoints, step, cfg.keep_checkpoints)
            if step >= cfg.steps:
                break
    progress.close()
    if accelerator.is_main_process:
        classifier = accelerator.unwrap_model(model)
        tmp = out.with_name(out.name + ".tmp-save")
        shutil.rmtree(tmp, ignore_errors=True)
        classifier.save_pretrained(tmp)
        if val_ids:
            logits = [frame_logits(classifier, store.clip(i).frames) for i in val_ids]
            labels = [emotion_label(store.clip(i)) for i in val_ids]
            write_json_atomic(tmp / "validation.json", emotion_accuracy(logits, labels))
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)
    accelerator.wait_for_everyone()
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="YAML config (see configs/emotion_classifier.yaml).")
    parser.add_argument("--store", help="Clip store to train on (overrides the config).")
    parser.add_argument("--output-dir", help="Where to save the classifier (overrides the config).")
    parser.add_argument("--steps", type=int, help="Number of optimisation steps (overrides the config).")


def load_config(args: argparse.Namespace) -> OmegaConf:
    """The YAML config with the command-line overrides applied."""
    if not Path(args.config).is_file():
        raise EmodiffError(f"Config file {args.config} does not exist.")
    config = OmegaConf.load(args.config)
    if args.store:
        config.store = args.store
    if args.output_dir:
        config.output_dir = args.output_dir
    if args.steps:
        config.train.steps = args.steps
    return config


def run(args: argparse.Namespace) -> int:
    out = train(load_config(args))
    print(f"Saved the emotion classifier to {out}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(prog="emodiff.train.emotion_classifier", description=__doc__)
    add_arguments(parser)
    try:
        return run(parser.parse_args())
    except EmodiffError as err:
        print(f"emodiff: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
