"""Lip sync: SyncNet (Chung & Zisserman 2016, "Out of time") LSE-D / LSE-C, as reported by Wav2Lip and
the talking-head papers.

The network is `emodiff.models.syncnet.SyncNet` (the released "S" network; official `syncnet_v2.model` weights
load with `SyncNet.from_syncnet_v2(path)`). Inputs follow the official evaluation: 25 fps face crops,
BGR, 0–255, windows of 5 frames (image_size², default 224); MFCCs (13 × 20 = 0.2 s, `mfcc` below) of
16-bit-scaled 16 kHz audio. Embeddings are not normalised.

Scoring (official `calc_pdist`): the audio embeddings are padded with 15 zero vectors on each side; for every
lag d in [−15, 15] the distance between video window i and audio window i + d is averaged over i. LSE-D is
the smallest mean distance, LSE-C (confidence) the median minus that minimum, and `offset` the minimising d
(the audio lags the video by `offset` frames; the official script prints −d).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
from scipy.fft import dct
from torch import nn

from emodiff.data.media import SAMPLE_RATE
from emodiff.errors import EmodiffError
from emodiff.models.syncnet import SyncNet

FPS = 25
MFCC_PER_FRAME = 4  # 100 Hz MFCCs at 25 fps
WINDOW_FRAMES = 5
MAX_OFFSET = 15


def mfcc(audio16k: np.ndarray) -> np.ndarray:
    """MFCCs (steps, 13) at 100 Hz with the conventions of python_speech_features (used by SyncNet): audio
    scaled to 16-bit integers, pre-emphasis 0.97, 25 ms rectangular frames without centring, 512-point power
    spectrum / 512, 26 triangular HTK-mel filters on FFT bins, log, orthonormal DCT-II, lifter 22, and
    coefficient 0 replaced by the log frame energy."""
    signal = np.asarray(audio16k, dtype=np.float64) * 32768.0
    signal = np.append(signal[:1], signal[1:] - 0.97 * signal[:-1])
    frame_len, step, nfft = 400, 160, 512
    n = 1 if len(signal) <= frame_len else 1 + int(np.ceil((len(signal) - frame_len) / step))
    signal = np.pad(signal, (0, (n - 1) * step + frame_len - len(signal)))
    frames = signal[np.arange(frame_len)[None, :] + step * np.arange(n)[:, None]]
    power = np.abs(np.fft.rfft(frames, nfft)) ** 2 / nfft
    energy = power.sum(axis=1)
    mel_points = np.linspace(0.0, 2595 * np.log10(1 + (SAMPLE_RATE / 2) / 700), 26 + 2)
    bins = np.floor((nfft + 1) * 700 * (10 ** (mel_points / 2595) - 1) / SAMPLE_RATE).astype(int)
    bank = np.zeros((26, nfft // 2 + 1))
    for j in range(26):
        lo, mid, hi = bins[j], bins[j + 1], bins[j + 2]
        bank[j, lo:mid] = (np.arange(lo, mid) - lo) / (mid - lo)
        bank[j, mid:hi] = (hi - np.arange(mid, hi)) / (hi - mid)
    eps = np.finfo(float).eps
    feats = np.log(np.maximum(power @ bank.T, eps))
    ceps = dct(feats, type=2, axis=1, norm="ortho")[:, :13]
    ceps *= 1 + 11.0 * np.sin(np.pi * np.arange(13) / 22)
    ceps[:, 0] = np.log(np.maximum(energy, eps))
    return ceps.astype(np.float32)


def sync_windows(frames: np.ndarray, audio16k: np.ndarray, image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Model inputs for every start frame i of a 25 fps video: lip clips (N, 3, 5, S, S) of frames i..i+4
    (whole face crops, BGR, 0–255) and the MFCC windows (N, 1, 13, 20) of the same 0.2 s."""
    coeffs = mfcc(audio16k)
    n = min(len(frames), len(coeffs) // MFCC_PER_FRAME) - WINDOW_FRAMES + 1
    if n < 1:
        raise EmodiffError(f"Sync needs at least {WINDOW_FRAMES} frames with audio.")
    crops = np.stack([cv2.resize(cv2.cvtColor(np.ascontiguousarray(f), cv2.COLOR_RGB2BGR), (image_size, image_size),
                                 interpolation=cv2.INTER_AREA) for f in frames[: n + WINDOW_FRAMES - 1]])
    video = torch.from_numpy(crops).float().permute(3, 0, 1, 2)  # (3, T, S, S)
    lips = torch.stack([video[:, i:i + WINDOW_FRAMES] for i in range(n)])
    audio = torch.from_numpy(coeffs).T  # (13, steps)
    span = WINDOW_FRAMES * MFCC_PER_FRAME
    mfccs = torch.stack([audio[None, :, i * MFCC_PER_FRAME:i * MFCC_PER_FRAME + span] for i in range(n)])
    return lips, mfccs


@dataclass
class SyncScores:
    offset: int  # audio lag (frames) with the smallest mean distance
    lse_d: float  # mean distance at that lag (lower = better sync)
    lse_c: float  # median − minimum of the mean distances over lags (higher = more confident sync)
    mean_distances: np.ndarray  # (2·max_offset + 1,) for lags −max_offset..max_offset


def score_embeddings(lip_emb: torch.Tensor, audio_emb: torch.Tensor, max_offset: int = MAX_OFFSET) -> SyncScores:
    """LSE-D / LSE-C / offset from per-window embeddings (N, D), audio padded with zeros (official rule)."""
    padded = nn.functional.pad(audio_emb, (0, 0, max_offset, max_offset))
    n = len(lip_emb)
    dist = np.array([float((lip_emb - padded[d + max_offset:d + max_offset + n]).norm(dim=1).mean())
                     for d in range(-max_offset, max_offset + 1)])
    best = int(dist.argmin())
    return SyncScores(offset=best - max_offset, lse_d=float(dist[best]), lse_c=float(np.median(dist) - dist[best]),
                      mean_distances=dist)


@torch.no_grad()
def sync_scores(model: SyncNet, frames: np.ndarray, audio16k: np.ndarray, fps: float,
                max_offset: int = MAX_OFFSET, batch_size: int = 32) -> SyncScores:
    """SyncNet LSE-D / LSE-C of a 25 fps video (aligned face crops uint8 (T, S, S, 3)) and its 16 kHz audio."""
    if round(fps) != FPS:
        raise EmodiffError(f"SyncNet scores need {FPS} fps videos; evaluate with --fps {FPS}.")
    model.eval()
    lips, mfccs = sync_windows(frames, audio16k, model.config.image_size)
    lip_emb = torch.cat([model.embed_lips(b.to(model.device)).cpu() for b in lips.split(batch_size)])
    audio_emb = torch.cat([model.embed_audio(b.to(model.device)).cpu() for b in mfccs.split(batch_size)])
    return score_embeddings(lip_emb, audio_emb, max_offset)
