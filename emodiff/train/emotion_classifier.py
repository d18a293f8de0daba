"""Train the emotion classifier behind EmoAcc on the labelled clips of a clip store.

The classifier is saved to OUTPUT_DIR/model (give that folder to `emodiff evaluate --emotion-classifier`),
the held-out clips' video accuracy to OUTPUT_DIR/validation.json.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from torch.utils.data import Dataset

from emodiff.data.datasets import emotion_label, frames_to_tensor
from emodiff.data.store import ClipStore
from emodiff.files import write_json_atomic
from emodiff.errors import EmodiffError
from emodiff.metrics.emotion import emotion_accuracy, frame_logits
from emodiff.models.emotion_classifier import EmotionClassifier
from emodiff.train.common import TrainingRun, batches, check_finite, optimizer_step


class LabelledFrames(Dataset):
    """(image in [-1, 1] (3, R, R), emotion index) for every `stride`-th frame of the given clips; items
    n..2n−1 are the same frames mirrored left–right (augmentation without random state)."""

    def __init__(self, store: ClipStore, clip_ids: list[str], resolution: int, stride: int):
        self.clips = [store.clip(i) for i in clip_ids]
        self.index = [(c, t) for c, clip in enumerate(self.clips) for t in range(0, clip.n_frames, stride)]
        self.resolution = resolution

    def __len__(self) -> int:
        return 2 * len(self.index)

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


def train(config: DictConfig, resume: str | None = None) -> Path:
    """Run (or resume) training as configured; returns the saved classifier folder."""
    store = ClipStore.open(config.data.store)
    train_ids, val_ids = split_labelled_clips(store, config.data.val_fraction, config.seed)
    dataset = LabelledFrames(store, train_ids, config.model.resolution, config.data.frame_stride)
    training = TrainingRun(config, "emotion-classifier", resume)
    accelerator = training.accelerator
    model = EmotionClassifier(resolution=config.model.resolution, channels=tuple(config.model.channels),
                              dropout=config.model.dropout)
    tc = config.train
    optimizer = torch.optim.AdamW(model.parameters(), lr=tc.learning_rate, weight_decay=tc.weight_decay)
    model, optimizer = accelerator.prepare(model, optimizer)
    start = training.resume().step
    stream = batches(accelerator, dataset, tc.batch_size, config.seed, start, config.data.num_workers)
    for step in training.steps(start):
        images, labels = next(stream)
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        check_finite(accelerator, {"cross-entropy": loss}, step)
        optimizer_step(accelerator, optimizer, loss, list(model.parameters()), tc.max_grad_norm, step)
        training.log(step, {"loss/cross_entropy": loss}, show=("loss/cross_entropy",))
        if training.checkpoint_due(step):
            training.save_checkpoint(step)
    path = training.finish({"model": model})["model"]
    if accelerator.is_main_process and val_ids:
        classifier = accelerator.unwrap_model(model)
        logits = [frame_logits(classifier, store.clip(i).frames) for i in val_ids]
        write_json_atomic(training.output_dir / "validation.json",
                          emotion_accuracy(logits, [emotion_label(store.clip(i)) for i in val_ids]))
    return path
