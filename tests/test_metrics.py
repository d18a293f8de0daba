"""Metrics checked against values obtained independently: closed forms, brute-force references written
here, and tiny networks trained or built in the test."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import scipy.linalg
import torch

from emodiff.errors import EmodiffError
from emodiff.metrics import framewise, frechet, landmarks, linearity, quality
from emodiff.metrics.lpips import LPIPS, SCALING_SCALE, SCALING_SHIFT
from emodiff.metrics.sync import mfcc, score_embeddings, sync_scores, sync_windows
from emodiff.models.syncnet import SyncNet

# ------------------------------------------------------------------------------------------ PSNR / SSIM


def test_psnr_identical_is_infinite_and_constant_error_matches_closed_form():
    rng = np.random.default_rng(0)
    video = rng.integers(10, 240, (3, 24, 24, 3), dtype=np.uint8)
    assert quality.psnr(video, video) == math.inf
    shifted = video + np.uint8(5)
    assert quality.psnr(video, shifted) == pytest.approx(10 * math.log10(255**2 / 25))


def test_ssim_matches_closed_form_and_brute_force_windows():
    a = np.full((20, 20, 3), 100, np.uint8)
    b = np.full((20, 20, 3), 140, np.uint8)
    c1 = (0.01 * 255) ** 2
    assert quality.ssim(a, a) == pytest.approx(1.0)
    assert quality.ssim(a, b) == pytest.approx((2 * 100 * 140 + c1) / (100**2 + 140**2 + c1))

    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (16, 16, 3)).astype(np.float64)
    y = np.clip(x + rng.normal(0, 30, x.shape), 0, 255)
    g = np.exp(-((np.arange(11) - 5.0) ** 2) / (2 * 1.5**2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    c2 = (0.03 * 255) ** 2
    values = []
    for ch in range(3):
        for i in range(16 - 10):
            for j in range(16 - 10):
                px, py = x[i:i + 11, j:j + 11, ch], y[i:i + 11, j:j + 11, ch]
                mx, my = (w * px).sum(), (w * py).sum()
                vx, vy = (w * (px - mx) ** 2).sum(), (w * (py - my) ** 2).sum()
                cov = (w * (px - mx) * (py - my)).sum()
                values.append((2 * mx * my + c1) * (2 * cov + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
    assert quality.ssim(x.astype(np.uint8), y.astype(np.uint8)) == pytest.approx(
        np.mean(values), abs=2e-3)  # the brute force used unrounded y


# ------------------------------------------------------------------------------------------ LPIPS

ALEX_CONVS = {0: (64, 3, 11), 3: (192, 64, 5), 6: (384, 192, 3), 8: (256, 384, 3), 10: (256, 256, 3)}
VGG_CONVS = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]


def _alex_files(tmp_path, seed=0):
    """Random weights saved in torchvision's alexnet and lpips' alex.pth key layouts."""
    g = torch.Generator().manual_seed(seed)
    backbone = {}
    for i, (c_out, c_in, k) in ALEX_CONVS.items():
        backbone[f"features.{i}.weight"] = torch.randn(c_out, c_in, k, k, generator=g) / math.sqrt(c_in * k * k)
        backbone[f"features.{i}.bias"] = torch.randn(c_out, generator=g) * 0.1
    backbone["classifier.1.weight"] = torch.zeros(4, 9216)  # ignored, as in torchvision files
    channels = [64, 192, 384, 256, 256]
    linear = {f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1, generator=g) for k, c in enumerate(channels)}
    torch.save(backbone, tmp_path / "alexnet.pth")
    torch.save(linear, tmp_path / "alex.pth")
    return backbone, linear


def _reference_lpips(backbone, linear, x, y):
    """LPIPS written out functionally from the paper's definition (independent of the module)."""
    shift = torch.tensor(SCALING_SHIFT).view(1, 3, 1, 1)
    scale = torch.tensor(SCALING_SCALE).view(1, 3, 1, 1)

    def feats(img):
        h = (img - shift) / scale
        out = []
        for i, (stride, pad, pool_before) in zip(ALEX_CONVS, [(4, 2, False), (1, 2, True), (1, 1, True), (1, 1, False), (1, 1, False)]):
            if pool_before:
                h = torch.nn.functional.max_pool2d(h, 3, 2)
            h = torch.relu(torch.nn.functional.conv2d(h, backbone[f"features.{i}.weight"], backbone[f"features.{i}.bias"], stride, pad))
            out.append(h / (h.norm(dim=1, keepdim=True) + 1e-10))
        return out

    return sum((linear[f"lin{k}.model.1.weight"] * (a - b) ** 2).sum(1).mean(dim=(1, 2))
               for k, (a, b) in enumerate(zip(feats(x), feats(y))))


def test_lpips_loads_official_layouts_and_matches_functional_definition(tmp_path):
    backbone, linear = _alex_files(tmp_path)
    model = LPIPS.from_files("alex", tmp_path / "alexnet.pth", tmp_path / "alex.pth")
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    y = (x + 0.3 * torch.randn_like(x)).clamp(-1, 1)
    assert torch.equal(model(x, x), torch.zeros(2))
    d = model(x, y)
    assert (d > 0).all()
    assert torch.allclose(d, _reference_lpips(backbone, linear, x, y), rtol=1e-4)
    # closer images are closer
    assert (model(x, (x + 0.05 * torch.randn_like(x)).clamp(-1, 1)) < d).all()


def test_lpips_vgg_layout_and_bad_files(tmp_path):
    channels = [3, 64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
    backbone = {}
    for n, i in enumerate(VGG_CONVS):
        backbone[f"features.{i}.weight"] = torch.randn(channels[n + 1], channels[n], 3, 3) * 0.05
        backbone[f"features.{i}.bias"] = torch.zeros(channels[n + 1])
    torch.save(backbone, tmp_path / "vgg16.pth")
    torch.save({f"lin{k}.model.1.weight": torch.ones(1, c, 1, 1) for k, c in enumerate([64, 128, 256, 512, 512])},
               tmp_path / "vgg.pth")
    model = LPIPS.from_files("vgg", tmp_path / "vgg16.pth", tmp_path / "vgg.pth")
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    assert model(x, x).item() == 0 and model(x, -x).item() > 0
    with pytest.raises(EmodiffError, match="missing"):
        LPIPS.from_files("alex", tmp_path / "vgg16.pth", tmp_path / "vgg.pth")
    with pytest.raises(EmodiffError, match="does not exist"):
        LPIPS.from_files("vgg", tmp_path / "nope.pth", tmp_path / "vgg.pth")


# ------------------------------------------------------------------------------------------ FLIE / LIE


def test_flie_linear_edit_is_zero_nonlinear_is_large_and_hand_value():
    rng = np.random.default_rng(0)
    neutral, direction = rng.normal(size=50), rng.normal(size=50)
    ks = np.linspace(0, 1, 6)

    def videos(f):  # 20 frames per intensity, zero-mean jitter that averages out exactly
        jitter = rng.normal(size=(20, 50))
        jitter -= jitter.mean(axis=0)
        return [neutral + f(k) * direction + 0.1 * jitter for k in ks]

    assert linearity.flie(videos(lambda k: k)) == pytest.approx(0.0, abs=1e-9)
    assert linearity.flie(videos(lambda k: k**3)) > 10
    # steps: dimension 0 = [1, 1, 1] (CV 0), dimension 1 = [1, 2, 3] (σ = √(2/3), μ = 2)
    means = [np.array([[0.0, 0.0]]), np.array([[1.0, 1.0]]), np.array([[2.0, 3.0]]), np.array([[3.0, 6.0]])]
    assert linearity.flie(means) == pytest.approx(math.sqrt(2 / 3) / 2)
    with pytest.raises(EmodiffError):
        linearity.flie(means[:2])


def test_lie_closed_forms(tmp_path):
    _alex_files(tmp_path)
    model = LPIPS.from_files("alex", tmp_path / "alexnet.pth", tmp_path / "alex.pth")
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    b = rng.integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    # equal adjacent distances → CV 0; distances [0, d] → σ/μ = (d/2)/(d/2) = 1
    assert linearity.lie(model, [a, b, a, b]) == pytest.approx(0.0, abs=1e-5)
    assert linearity.lie(model, [a, a, b]) == pytest.approx(1.0)


# ------------------------------------------------------------------------------------------ CPBD


def _reference_cpbd(image):
    """Straightforward CPBD following Narvekar & Karam 2011, one pixel at a time."""
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    edges = cv2.Canny(gray, 50, 150)
    g = gray.astype(float)
    gx = cv2.Sobel(g, cv2.CV_64F, 1, 0, ksize=3)
    gy = cv2.Sobel(g, cv2.CV_64F, 0, 1, ksize=3)
    hist = []
    for by in range(gray.shape[0] // 64):
        for bx in range(gray.shape[1] // 64):
            n_edges = sum(edges[y, x] > 0 for y in range(by * 64, by * 64 + 64) for x in range(bx * 64, bx * 64 + 64))
            if n_edges <= 0.002 * 64 * 64:
                continue
            block = g[by * 64:by * 64 + 64, bx * 64:bx * 64 + 64]
            w_jnb = 5 if block.max() - block.min() <= 50 else 3
            for y in range(by * 64, by * 64 + 64):
                for x in range(bx * 64, bx * 64 + 64):
                    if not edges[y, x] or abs(gx[y, x]) < abs(gy[y, x]) or gx[y, x] == 0:
                        continue
                    sign = 1 if gx[y, x] > 0 else -1
                    r = x
                    while r + 1 < g.shape[1] and sign * (g[y, r + 1] - g[y, r]) > 0:
                        r += 1
                    left = x
                    while left - 1 >= 0 and sign * (g[y, left] - g[y, left - 1]) > 0:
                        left -= 1
                    hist.append(1 - math.exp(-((r - left) / w_jnb) ** 3.6))
    return sum(p <= 0.63 for p in hist) / len(hist)


def _test_image(size=128, seed=0):
    rng = np.random.default_rng(seed)
    img = np.full((size, size, 3), 90, np.uint8)
    for _ in range(25):
        x0, y0 = rng.integers(0, size - 20, 2)
        w, h = rng.integers(8, 40, 2)
        img[y0:y0 + h, x0:x0 + w] = rng.integers(0, 256, 3)
    return img


def test_cpbd_blur_lowers_it_and_matches_reference_implementation():
    sharp = _test_image()
    blurred = cv2.GaussianBlur(sharp, (0, 0), 1.5)
    c_sharp, c_blur = quality.cpbd(sharp), quality.cpbd(blurred)
    assert c_sharp == pytest.approx(_reference_cpbd(sharp))
    assert c_blur == pytest.approx(_reference_cpbd(blurred))
    assert c_sharp > c_blur + 0.2


def test_cpbd_of_a_real_face_falls_with_blur(fixtures_dir):
    face = cv2.cvtColor(cv2.imread(str(fixtures_dir / "face_happy.png")), cv2.COLOR_BGR2RGB)
    values = [quality.cpbd(cv2.GaussianBlur(face, (0, 0), s)) if s else quality.cpbd(face) for s in (0, 0.5, 1.0)]
    print(f"CPBD of face_happy.png at blur σ = 0, 0.5, 1: {[round(v, 3) for v in values]}")
    assert values[0] > values[1] > values[2]
    assert 0.15 < values[0] < 0.5  # the range papers report for real talking-head frames
    assert values[1] == pytest.approx(_reference_cpbd(cv2.GaussianBlur(face, (0, 0), 0.5)))


class _MeanColour(torch.nn.Module):
    """A face 'embedder' whose embedding is the mean colour, so CSIM has a hand-computable value."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


def test_identity_similarity_is_mean_cosine_to_the_identity_frame():
    identity = np.zeros((8, 8, 3), np.uint8)
    identity[..., 0] = 255  # embedding (1, −1, −1)
    frames = np.zeros((2, 8, 8, 3), np.uint8)
    frames[0] = identity
    frames[1, ..., 1] = 255  # embedding (−1, 1, −1): cosine −1/3 with the identity
    embedder = torch.jit.script(_MeanColour())
    assert quality.identity_similarity(embedder, identity, frames[:1]) == pytest.approx(1.0)
    assert quality.identity_similarity(embedder, identity, frames) == pytest.approx((1 - 1 / 3) / 2)


# ------------------------------------------------------------------------------------------ FID / FVD


def test_frechet_distance_closed_forms():
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, -1.0, 2.0])
    s1, s2 = np.diag([1.0, 4.0, 9.0]), np.diag([4.0, 1.0, 1.0])
    # commuting covariances: ‖Δμ‖² + Σ(√s1 − √s2)²
    assert frechet.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(5.0 + 1 + 1 + 4)
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(3, 3)), rng.normal(size=(3, 3))
    s1, s2 = a @ a.T + np.eye(3), b @ b.T + np.eye(3)
    root = np.real(scipy.linalg.sqrtm(s1))
    cross = np.real(scipy.linalg.sqrtm(root @ s2 @ root))
    assert frechet.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(
        5.0 + np.trace(s1) + np.trace(s2) - 2 * np.trace(cross))
    # samples: same Gaussian ≈ 0, shifted Gaussian ≈ ‖Δμ‖²
    x, y = rng.normal(size=(20000, 4)), rng.normal(size=(20000, 4))
    assert frechet.frechet_distance_of_features(x, y) < 0.01
    assert frechet.frechet_distance_of_features(x, y + 2.0) == pytest.approx(16.0, rel=0.02)


class _TinyInception(torch.nn.Module):
    """Stands in for inception-2015-12-05.pt: uint8 (N, 3, H, W) → features."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3)

    def forward(self, x: torch.Tensor, return_features: bool = True) -> torch.Tensor:
        h = torch.nn.functional.adaptive_avg_pool2d(torch.relu(self.conv(x.float() / 127.5 - 1)), 2)
        return 10 * h.flatten(1)


class _TinyI3D(torch.nn.Module):
    """Stands in for i3d_torchscript.pt: uint8 (N, 3, T, H, W) → features."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv3d(3, 6, 3)

    def forward(self, x: torch.Tensor, rescale: bool = True, resize: bool = True,
                return_features: bool = True) -> torch.Tensor:
        return 10 * self.conv(x.float() / 127.5 - 1).mean(dim=(2, 3, 4))


def test_fid_and_fvd_with_torchscript_feature_networks(tmp_path):
    torch.manual_seed(0)
    torch.jit.script(_TinyInception()).save(str(tmp_path / "inception.pt"))
    torch.jit.script(_TinyI3D()).save(str(tmp_path / "i3d.pt"))
    inception = frechet.load_feature_network(tmp_path / "inception.pt")
    i3d = frechet.load_feature_network(tmp_path / "i3d.pt")
    rng = np.random.default_rng(0)
    real = rng.integers(0, 256, (4, 32, 16, 16, 3), dtype=np.uint8)
    dark = (real // 3).astype(np.uint8)
    frames = real.reshape(-1, 16, 16, 3)
    assert frechet.fid(inception, frames, frames) < 1e-6
    assert frechet.fid(inception, frames, dark.reshape(-1, 16, 16, 3)) > 1e-3
    assert frechet.fvd(i3d, list(real), list(real)) < 1e-6
    assert frechet.fvd(i3d, list(real), list(dark)) > 1e-3
    with pytest.raises(EmodiffError, match="at least 16 frames"):
        frechet.fvd(i3d, [real[0, :8]], [real[0, :8]])
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    with pytest.raises(EmodiffError, match="TorchScript"):
        frechet.load_feature_network(tmp_path / "junk.pt")


# ------------------------------------------------------------------------------------------ landmarks


def test_landmark_distances_closed_forms():
    rng = np.random.default_rng(0)
    ref = rng.uniform(0, 128, (5, 68, 2))
    assert landmarks.f_lmd(ref, ref) == 0 and landmarks.m_lmd(ref, ref) == 0
    assert landmarks.f_lmd(ref, ref + [7.0, -3.0]) == pytest.approx(0.0, abs=1e-12)  # translation removed
    moved = ref.copy()
    moved[:, 48:68] += [3.0, 4.0]  # mouth moved by 5 px; centring moves everything by (20/68)·(3, 4)
    assert landmarks.m_lmd(ref, moved) == pytest.approx(5 * 48 / 68)
    assert landmarks.f_lmd(ref, moved) == pytest.approx((20 * 5 * 48 / 68 + 48 * 5 * 20 / 68) / 68)


# ------------------------------------------------------------------------------------------ frame-wise intensity


def test_framewise_metrics_closed_forms():
    assert framewise.beat_align(np.array([10, 20]), np.array([13, 20, 40])) == pytest.approx((math.exp(-0.5) + 1) / 2)
    pts = [np.array([[0.0, 0.0], [3.0, 4.0]]), np.array([[6.0, 8.0]])]
    assert framewise.diversity(pts) == pytest.approx((5 + 10 + 5) / 3)
    assert framewise.intensity_l2([0.0, 0.5, 1.0], [0.1, 0.5, 0.7]) == pytest.approx((0.01 + 0.09) / 3)
    # expression that moves and pauses (period 40 frames): the speed minima are the pauses
    t = np.arange(120)
    expression = np.stack([np.sin(2 * np.pi * t / 40), np.zeros(120)], axis=1)
    assert set(framewise.motion_beats(expression).tolist()) <= {9, 10, 11, 29, 30, 31, 49, 50, 51, 69, 70, 71, 89, 90, 91, 109, 110, 111}
    # audio bursts start at known frames
    assert framewise.audio_onset_beats(_bursts([10, 25, 40], 50), 25).tolist() == [10, 25, 40]


def test_diversity_samples_pairs_of_large_sets_without_bias():
    rng = np.random.default_rng(0)
    videos = [rng.normal(size=(1000, 50)) * rng.uniform(0.5, 2.0, 50), rng.normal(1.0, 1.0, (800, 50))]
    pooled = np.concatenate(videos)
    n = len(pooled)
    brute = sum(np.linalg.norm(pooled[i + 1:] - pooled[i], axis=1).sum() for i in range(n - 1)) / (n * (n - 1) / 2)
    assert n * (n - 1) / 2 > framewise.DIVERSITY_PAIRS  # so the value is sampled
    sampled = framewise.diversity(videos)
    print(f"Diversity of 1800 frames: all pairs {brute:.5f}, {framewise.DIVERSITY_PAIRS} sampled pairs {sampled:.5f}")
    assert sampled == pytest.approx(brute, rel=2e-3) and framewise.diversity(videos) == sampled  # fixed seed
    assert framewise.diversity(videos, max_pairs=10**7) == pytest.approx(brute, rel=1e-12)  # every pair


def _bursts(frames: list[int], n_frames: int, fps: int = 25) -> np.ndarray:
    """16 kHz audio, silent but for a 3-frame tone burst starting at each of `frames`."""
    hop = 16000 // fps
    audio = np.zeros(n_frames * hop, np.float32)
    for f in frames:
        audio[f * hop:(f + 3) * hop] = np.sin(np.arange(3 * hop) * 0.3)
    return audio


def _smooth_curves(rng: np.random.Generator, n_frames: int) -> np.ndarray:
    """8-dim expression curves, Gaussian-smoothed noise (σ = 5 frames) with standard deviation 0.3."""
    from scipy.ndimage import gaussian_filter1d

    curves = gaussian_filter1d(rng.normal(size=(n_frames, 8)), 5.0, axis=0)
    return 0.3 * curves / curves.std()


def test_beat_align_does_not_reward_jitter():
    from emodiff.data.synthetic import SyntheticWorld

    world, n_frames = SyntheticWorld(size=32), 250
    scores: dict[tuple[str, float], list[float]] = {}
    for seed in range(20):
        rng = np.random.default_rng(seed)
        smooth = _smooth_curves(rng, n_frames)
        motions = {"smooth": smooth, "jittered": smooth + rng.normal(0, 0.02, smooth.shape)}
        audio, _ = world.speech(n_frames, 0.5, np.random.default_rng(1000 + seed))  # speech unrelated to the motion
        audio_beats = framewise.audio_onset_beats(audio, 25)
        for name, motion in motions.items():
            for smoothing in (0.0, framewise.MOTION_SPEED_SIGMA_FRAMES):
                scores.setdefault((name, smoothing), []).append(
                    framewise.beat_align(audio_beats, framewise.motion_beats(motion, smoothing)))
    mean = {key: float(np.mean(v)) for key, v in scores.items()}
    print({f"{name} σ={s:g}": round(v, 3) for (name, s), v in mean.items()})
    sigma = framewise.MOTION_SPEED_SIGMA_FRAMES
    assert mean[("jittered", 0.0)] > mean[("smooth", 0.0)] + 0.2  # the raw speed minima are gamed by jitter
    assert mean[("jittered", sigma)] <= mean[("smooth", sigma)] + 0.02


def _pausing_motion(beats: np.ndarray, n_frames: int, rng: np.random.Generator) -> np.ndarray:
    """8-dim motion that glides between random poses and comes to rest at each beat frame (smoothstep)."""
    knots = np.concatenate([[0], beats, [n_frames - 1]])
    poses = rng.normal(0, 0.5, (len(knots), 8))
    t = np.arange(n_frames)
    segment = np.clip(np.searchsorted(knots, t, side="right") - 1, 0, len(knots) - 2)
    phase = (t - knots[segment]) / (knots[segment + 1] - knots[segment])
    step = phase * phase * (3 - 2 * phase)
    return poses[segment] + step[:, None] * (poses[segment + 1] - poses[segment])


def test_beat_align_rewards_motion_that_pauses_on_the_audio_beats():
    n_frames, on_beat, unrelated = 250, [], []
    for seed in range(10):
        rng = np.random.default_rng(seed)
        beats = np.cumsum(rng.integers(15, 35, 12))
        beats = beats[beats < n_frames - 10]
        other = np.cumsum(rng.integers(15, 35, 12))
        other = other[other < n_frames - 10]
        audio_beats = framewise.audio_onset_beats(_bursts(beats.tolist(), n_frames), 25)
        assert audio_beats.tolist() == beats.tolist()
        on_beat.append(framewise.beat_align(audio_beats, framewise.motion_beats(_pausing_motion(beats, n_frames, rng))))
        unrelated.append(framewise.beat_align(audio_beats, framewise.motion_beats(_pausing_motion(other, n_frames, rng))))
    print(f"Beat Align on the beats {np.mean(on_beat):.3f}, unrelated {np.mean(unrelated):.3f}")
    assert np.mean(on_beat) > 0.65 and np.mean(on_beat) > np.mean(unrelated) + 0.35


# ------------------------------------------------------------------------------------------ SyncNet


def test_mfcc_matches_python_speech_features_values():
    t = np.arange(8000) / 16000
    x = np.round(8000 * np.sin(2 * np.pi * 440 * t) + 3000 * np.sin(2 * np.pi * 1250 * t**1.5)).astype(np.int16)
    # python_speech_features.mfcc(x, 16000), rows 0, 20 and 48, computed outside this project
    expected = np.array([
        [19.1003, 22.3541, 7.2554, -7.1539, -19.6292, -26.6784, -24.6937, -16.2915, -4.0908, 6.4795, 12.3468, 11.3085, 5.1742],
        [19.5189, 27.2194, -0.7991, -28.6893, -37.7125, -24.6532, -4.9579, 1.7045, -4.1767, -8.8446, 0.1071, 16.5061, 25.5712],
        [19.6112, 20.4926, -14.7272, -23.2133, -5.0638, -2.9323, -28.9614, -42.5166, -11.4774, 30.9834, 36.875, 8.9614, -8.9435]])
    coeffs = mfcc(x / 32768.0)
    assert coeffs.shape == (49, 13)
    assert np.abs(coeffs[[0, 20, 48]] - expected).max() < 1e-3


def test_syncnet_loads_the_official_layout(tmp_path):
    official = SyncNet()  # the released architecture: 224² crops, 1024-d embeddings
    state = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in official.state_dict().items()}
    torch.save(state, tmp_path / "syncnet_v2.model")
    loaded = SyncNet.from_syncnet_v2(tmp_path / "syncnet_v2.model")
    assert torch.equal(loaded.netcnnlip[0].weight, state["netcnnlip.0.weight"])
    assert loaded.netcnnlip[0].weight.shape == (96, 3, 5, 7, 7) and loaded.netcnnaud[18].weight.shape == (512, 256, 5, 4)
    del state["netfclip.3.weight"]
    torch.save(state, tmp_path / "broken.model")
    with pytest.raises(EmodiffError, match="netfclip.3.weight"):
        SyncNet.from_syncnet_v2(tmp_path / "broken.model")


def _talking(envelope: np.ndarray, size: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Frames whose mouth opening and audio loudness both follow `envelope` (one value per 25 fps frame)."""
    rng = np.random.default_rng(seed)
    frames = np.full((len(envelope), size, size, 3), 160, np.uint8)
    for i, e in enumerate(envelope):
        h = 2 + int(round(e * 16))
        frames[i, 36:36 + h, 20:44] = 30
    carrier = np.sin(2 * np.pi * 220 * np.arange(640) / 16000)
    audio = np.concatenate([e * carrier for e in envelope]) * 0.5 + rng.normal(0, 0.003, 640 * len(envelope))
    return frames, audio.astype(np.float32)


def test_syncnet_trained_here_finds_the_audio_shift():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = SyncNet(image_size=64, audio_channels=(8, 16, 16, 16, 16, 32), lip_channels=(8, 16, 16, 16, 16, 32),
                    embed_dim=32)
    frames, audio = _talking(rng.uniform(0, 1, 300))
    lips, mfccs = sync_windows(frames, audio, 64)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(120):  # each lip window must pick its own audio window in the batch by distance
        idx = torch.from_numpy(rng.choice(len(lips), 32, replace=False))
        logits = -torch.cdist(model.embed_lips(lips[idx]), model.embed_audio(mfccs[idx])) ** 2 / 10
        loss = torch.nn.functional.cross_entropy(logits, torch.arange(len(idx)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    frames, audio = _talking(rng.uniform(0, 1, 100), seed=1)
    aligned = sync_scores(model, frames, audio, 25)
    assert aligned.offset == 0
    k = 4
    delayed = np.concatenate([np.zeros(k * 640, np.float32), audio])[: len(audio)]
    late = sync_scores(model, frames, delayed, 25)
    assert late.offset == k
    unrelated = sync_scores(model, frames, _talking(rng.uniform(0, 1, 100), seed=2)[1], 25)
    assert aligned.lse_c > 2 * unrelated.lse_c and aligned.lse_d < unrelated.lse_d
    print(f"SyncNet: aligned LSE-C {aligned.lse_c:.3f} LSE-D {aligned.lse_d:.3f}; delayed {k} → offset "
          f"{late.offset}; unrelated audio LSE-C {unrelated.lse_c:.3f} LSE-D {unrelated.lse_d:.3f}")
    with pytest.raises(EmodiffError, match="25 fps"):
        sync_scores(model, frames, audio, 30)


def test_sync_scores_closed_form():
    emb = torch.randn(40, 8)
    scores = score_embeddings(emb, torch.roll(emb, 2, dims=0), max_offset=5)
    assert scores.offset == 2
    # at lag 2 only the last two windows meet zero padding: mean distance = (‖e_38‖ + ‖e_39‖) / 40
    assert scores.lse_d == pytest.approx(float(emb[38:].norm(dim=1).sum() / 40), rel=1e-5)
    assert scores.lse_c == pytest.approx(float(np.median(scores.mean_distances)) - scores.lse_d)
