"""Train the emotion classifier behind EmoAcc on the labelled clips of a clip store.

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
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from emodiff.data.datasets import emotion_label, frames_to_tensor
from emodiff.data.store import ClipStore, write_json_atomic
from emodiff.errors import EmodiffError
from emodiff.metrics.emotion import EmotionClassifier, emotion_accuracy, frame_logits


class LabelledFrames(Dataset):
    """(image in [-1, 1] (3, R, R), emotion index) for every `stride`-th frame of the given clips."""

    def __init__(self, store: ClipStore, clip_ids: list[str], resolution: int, stride: int, flip: bool):
        self.clips = [store.clip(i) for i in clip_ids]
        self.index = [(c, t) for c, clip in enumerate(self.clips) for t in range(0, clip.n_frames, stride)]
        self.resolution, self.flip = resolution, flip

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        c, t = self.index[i]
        image = frames_to_tensor(self.clips[c].frames[t], self.resolution)
        if self.flip and torch.rand(()) < 0.5:
            image = image.flip(-1)
        return image, emotion_label(self.clips[c])


def split_labelled_clips(store: ClipStore, val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Labelled clip ids split by clip into (train, validation)."""
    ids = [i for i in store.clip_ids() if store.clip(i).emotion is not None]
    if not ids:
        raise EmodiffError(f"The store {store.root} has no clips with an emotion label to train on.")
    order = np.random.default_rng(seed).permutation(len(ids))
    n_val = int(round(val_fraction * len(ids))) if len(ids) > 1 else 0
    return [ids[k] for k in order[n_val:]], [ids[k] for k in order[:n_val]]


def train(config: OmegaConf) -> Path:
    """Run the training loop of `config`; returns the directory of the saved classifier."""
    from accelerate import Accelerator

    accelerator = Accelerator()
    cfg = config.train
    torch.manual_seed(cfg.seed)
    store = ClipStore.open(config.store)
    train_ids, val_ids = split_labelled_clips(store, cfg.val_fraction, cfg.seed)
    model = EmotionClassifier(resolution=config.model.resolution, channels=tuple(config.model.channels),
                              dropout=config.model.dropout)
    data = LabelledFrames(store, train_ids, config.model.resolution, cfg.frame_stride, flip=True)
    loader = DataLoader(data, batch_size=cfg.batch_size, shuffle=True, drop_last=len(data) > cfg.batch_size,
                        num_workers=int(cfg.get("num_workers", 0)))
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    step, progress = 0, tqdm(total=cfg.steps, desc="emotion-classifier", disable=not accelerator.is_main_process)
    while step < cfg.steps:
        for images, labels in loader:
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
            if step >= cfg.steps:
                break
    progress.close()
    out = Path(config.output_dir)
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
