"""Lip sync: SyncNet (Chung & Zisserman 2016) LSE-D / LSE-C (as reported by Wav2Lip, Prajwal et al. 2020).

Our own SyncNet definition: a video encoder over 5 consecutive mouth crops (the lower half of the aligned
face, colour, stacked on channels) and an audio encoder over the matching 0.2 s of MFCCs (13 coefficients ×
20 steps at 100 Hz), each ending in an L2-normalised embedding. Weights are ours (safetensors via
`from_pretrained`); the official `syncnet_v2.model` layout is not loaded.

Scoring: for every audio lag d in [−15, 15] frames, the mean distance between video window i and audio
window i + d over the windows that overlap; LSE-D is the minimum of these mean distances, LSE-C (the
confidence) is their median minus the minimum, and `offset` is the minimising d (the audio lags the video by
`offset` frames).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from scipy.fft import dct
from torch import nn
from transformers.audio_utils import mel_filter_bank, spectrogram, window_function

from emodiff.errors import EmodiffError

SAMPLE_RATE = 16000
MFCC_RATE = 100  # MFCC steps per second (hop 10 ms)
MAX_OFFSET = 15


def mfcc(audio16k: np.ndarray, n_coefficients: int = 13, n_mels: int = 40) -> np.ndarray:
    """MFCCs (steps, n_coefficients) of 16 kHz audio: 25 ms Hann window, 10 ms hop, log-mel, DCT-II."""
    mel = mel_filter_bank(num_frequency_bins=257, num_mel_filters=n_mels, min_frequency=20.0,
                          max_frequency=SAMPLE_RATE / 2, sampling_rate=SAMPLE_RATE)
    log_mel = spectrogram(np.asarray(audio16k, dtype=np.float32), window_function(400, "hann"),
                          frame_length=400, hop_length=SAMPLE_RATE // MFCC_RATE, fft_length=512,
                          power=2.0, mel_filters=mel, log_mel="log")
    return dct(log_mel.T, type=2, axis=1, norm="ortho")[:, :n_coefficients].astype(np.float32)


def _conv_stack(in_channels: int, channels: tuple[int, ...]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for c in channels:
        layers += [nn.Conv2d(in_channels, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True)]
        in_channels = c
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())


class SyncNet(ModelMixin, ConfigMixin):
    """Two-stream audio-visual embedding network; `forward` returns unit embeddings (video, audio)."""

    @register_to_config
    def __init__(self, window_frames: int = 5, mouth_size: int = 48, mfcc_coefficients: int = 13,
                 channels: tuple[int, ...] = (64, 128, 256, 512), embed_dim: int = 512) -> None:
        super().__init__()
        self.video_encoder = nn.Sequential(_conv_stack(3 * window_frames, tuple(channels)),
                                           nn.Linear(channels[-1], embed_dim))
        self.audio_encoder = nn.Sequential(_conv_stack(1, tuple(channels)), nn.Linear(channels[-1], embed_dim))

    def forward(self, mouths: torch.Tensor, mfccs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """mouths (B, 3·window, h, w) in [-1, 1]; mfccs (B, 1, coefficients, steps)."""
        video = nn.functional.normalize(self.video_encoder(mouths), dim=1)
        audio = nn.functional.normalize(self.audio_encoder(mfccs), dim=1)
        return video, audio


def sync_windows(frames: np.ndarray, audio16k: np.ndarray, fps: float, window_frames: int = 5,
                 mouth_size: int = 48) -> tuple[torch.Tensor, torch.Tensor]:
    """Aligned model inputs for every start frame i: the mouth crops of frames i..i+window−1 (lower half of
    each aligned face, resized to mouth_size/2 × mouth_size) and the MFCCs of the same time span."""
    mouths = np.stack([cv2.resize(np.ascontiguousarray(f[f.shape[0] // 2:]), (mouth_size, mouth_size // 2),
                                  interpolation=cv2.INTER_AREA) for f in frames])
    coeffs = mfcc(audio16k)
    steps_per_frame = MFCC_RATE / fps
    span = int(round(window_frames * steps_per_frame))
    n = min(len(frames), int((len(coeffs) - span) / steps_per_frame) + window_frames) - window_frames + 1
    if n < 1:
        raise EmodiffError(f"Sync needs at least {window_frames} frames with audio.")
    video = torch.from_numpy(mouths).float().div(127.5).sub(1.0)  # (T, h, w, 3)
    video_windows = torch.stack([video[i:i + window_frames].permute(0, 3, 1, 2).flatten(0, 1) for i in range(n)])
    audio = torch.from_numpy(coeffs)
    audio_windows = torch.stack([audio[int(round(i * steps_per_frame)):][:span].T[None] for i in range(n)])
    return video_windows, audio_windows


@dataclass
class SyncScores:
    offset: int  # audio lag (frames) with the smallest mean distance
    lse_d: float  # mean distance at that lag (lower = better sync)
    lse_c: float  # median − minimum of the mean distances over lags (higher = more confident sync)
    mean_distances: np.ndarray  # (2·max_offset + 1,) for lags −max_offset..max_offset


def score_embeddings(video_emb: torch.Tensor, audio_emb: torch.Tensor, max_offset: int = MAX_OFFSET) -> SyncScores:
    """LSE-D / LSE-C / offset from per-window embeddings (N, D) of the video and the audio."""
    n = len(video_emb)
    lags = range(-max_offset, max_offset + 1)
    mean_distances = []
    for d in lags:
        lo, hi = max(0, -d), min(n, n - d)
        if hi - lo < 1:
            raise EmodiffError(f"Sync needs more than {max_offset} windows to test offsets of ±{max_offset} frames.")
        mean_distances.append(float((video_emb[lo:hi] - audio_emb[lo + d:hi + d]).norm(dim=1).mean()))
    dist = np.array(mean_distances)
    best = int(dist.argmin())
    return SyncScores(offset=lags[best], lse_d=float(dist[best]), lse_c=float(np.median(dist) - dist[best]),
                      mean_distances=dist)


@torch.no_grad()
def sync_scores(model: SyncNet, frames: np.ndarray, audio16k: np.ndarray, fps: float,
                max_offset: int = MAX_OFFSET, batch_size: int = 64) -> SyncScores:
    """SyncNet LSE-D / LSE-C of a video (aligned face crops uint8 (T, S, S, 3)) and its 16 kHz audio."""
    model.eval()
    video, audio = sync_windows(frames, audio16k, fps, model.config.window_frames, model.config.mouth_size)
    pairs = [model(v, a) for v, a in zip(video.split(batch_size), audio.split(batch_size))]
    return score_embeddings(torch.cat([p[0] for p in pairs]), torch.cat([p[1] for p in pairs]), max_offset)
