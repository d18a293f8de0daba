"""Emotion accuracy (EmoAcc; EMOdiffhead §4.3, EAT §4.1): a face-crop emotion classifier and video-level
accuracy.

The paper uses a pretrained classifier (Emotion-FAN fine-tuned on MEAD); emodiff ships the network and
its training stage (`emodiff train emotion-classifier`) so users train it on their own store. A video's
prediction is the arg-max of its mean frame logits, or the majority vote of its frame predictions.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from emodiff.data.datasets import frames_to_tensor
from emodiff.data.labels import EMOTIONS
from emodiff.models.emotion_classifier import EmotionClassifier


@torch.no_grad()
def frame_logits(model: EmotionClassifier, frames: np.ndarray, batch_size: int = 128) -> np.ndarray:
    """Per-frame logits (T, 8) of a video of aligned face crops uint8 (T, S, S, 3)."""
    model.eval()
    out = [model(frames_to_tensor(frames[s:s + batch_size], model.config.resolution).to(model.device)).cpu()
           for s in range(0, len(frames), batch_size)]
    return torch.cat(out).numpy()


def video_prediction(logits: np.ndarray) -> tuple[int, int]:
    """(arg-max of the mean frame logits, majority vote of the frame arg-maxes; ties → lowest index)."""
    votes = np.bincount(logits.argmax(axis=1), minlength=logits.shape[1])
    return int(logits.mean(axis=0).argmax()), int(votes.argmax())


def emotion_accuracy(video_logits: Sequence[np.ndarray], labels: Sequence[int]) -> dict:
    """Video-level EmoAcc by mean logits and by vote, plus a per-class table {emotion: {n, mean_logits, vote}}."""
    predictions = np.array([video_prediction(v) for v in video_logits]).reshape(-1, 2)
    labels = np.asarray(labels)
    correct = predictions == labels[:, None]
    per_class = {EMOTIONS[c]: {"n": int((labels == c).sum()),
                               "mean_logits": float(correct[labels == c, 0].mean()),
                               "vote": float(correct[labels == c, 1].mean())}
                 for c in sorted(set(labels.tolist()))}
    return {"emo_acc": float(correct[:, 0].mean()), "emo_acc_vote": float(correct[:, 1].mean()),
            "per_class": per_class}
