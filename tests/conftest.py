"""Shared test helpers: the real-media fixtures folder, a tiny clip store and a tiny untrained pipeline. Every test
runs torch on one thread (the suite runs its modules in parallel processes instead, README "Tests"), so a test's
numbers do not depend on the machine's cores or on which tests ran before it; a guard fails a test that changes it."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from emodiff.data.audio_features import extract_audio_features
from emodiff.data.labels import EMOTIONS
from emodiff.data.media import SAMPLE_RATE
from emodiff.data.store import ClipStore
from emodiff.data.synthetic import WORLD_FILE
from emodiff.train.common import CONFIG_DIR, load_config

ROOT = Path(__file__).resolve().parents[1]


TORCH_THREADS = 1


def pytest_configure(config: pytest.Config) -> None:
    torch.set_num_threads(TORCH_THREADS)


@pytest.fixture(autouse=True)
def _torch_threads_unchanged() -> Iterator[None]:
    """Fail a test that leaves torch's thread count changed (and restore it), so no test depends on the ones before."""
    yield
    after = torch.get_num_threads()
    if after != TORCH_THREADS:
        torch.set_num_threads(TORCH_THREADS)
        pytest.fail(f"the test left torch's thread count at {after} (the suite runs on {TORCH_THREADS})")


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """The real media folder named by EMODIFF_FIXTURES; tests using it skip when it is unset."""
    root = os.environ.get("EMODIFF_FIXTURES")
    if not root or not Path(root).is_dir():
        pytest.skip("EMODIFF_FIXTURES is not set (point it at a folder of real clips, e.g. ../shared/fixtures as .ci/run does)")
    return Path(root)


def write_random_store(root: Path, n_clips: int = 4, n_frames: int = 12, size: int = 16,
                       feat_dim: int = 8, exp_dim: int = 6, seed: int = 0) -> ClipStore:
    """A small store of random clips that honours the store contract (for shape/plumbing tests)."""
    rng = np.random.default_rng(seed)
    store = ClipStore.create(root)
    for c in range(n_clips):
        cid = f"clip{c:03d}"
        emotion = EMOTIONS[c % len(EMOTIONS)]
        base = np.array([[0.3, 0.4], [0.7, 0.4], [0.5, 0.75]]) * size
        lms = np.tile(base[rng.integers(0, 3, 68)], (n_frames, 1, 1)) + rng.normal(0, 0.5, (n_frames, 68, 2))
        store.write_clip(cid, {
            "frames": rng.integers(0, 256, (n_frames, size, size, 3), dtype=np.uint8),
            "audio_feats": rng.normal(size=(n_frames, feat_dim)),
            "landmarks": lms,
            "expression": rng.normal(size=(n_frames, exp_dim)),
            "intensity": rng.uniform(size=n_frames),
        }, {"identity": f"id{c % 2}", "emotion": emotion, "level": 3, "fps": 25},
            audio=np.zeros(n_frames * 640, dtype=np.float32))
        store.append_manifest({"id": cid, "status": "ok", "identity": f"id{c % 2}", "emotion": emotion})
    return store


def write_tiny_pipeline(folder: Path, size: int = 16, fps: int = 25, world: dict | None = None) -> Path:
    """An untrained size² pipeline folder (tiny denoiser config, stored references, no generator or predictor), with
    `world` as its synthetic world description when given (as `emodiff assemble` copies it from a synthetic store)."""
    from emodiff.models.reference_net import ReferenceNet
    from emodiff.models.unet import DenoisingUNet
    from emodiff.models.expression_reference import ExpressionReference
    from emodiff.pipeline import EmoDiffPipeline
    from emodiff.diffusion.gaussian import config_betas
    from emodiff.diffusion.schedulers import make_scheduler

    config = load_config(CONFIG_DIR / "denoiser_tiny.yaml")
    audio_dim = extract_audio_features(np.zeros(SAMPLE_RATE, np.float32), fps).shape[1]
    unet = DenoisingUNet(sample_size=size, window=config.data.window, audio_dim=audio_dim, expression_dim=50,
                         **OmegaConf.to_container(config.unet))
    EmoDiffPipeline(unet.eval(), ReferenceNet.matching(unet).eval(), ExpressionReference(expression_dim=50),
                    scheduler=make_scheduler("ddim", config_betas(config.diffusion)), resolution=size, window=config.data.window,
                    fps=fps).save_pretrained(folder)
    if world is not None:
        (folder / WORLD_FILE).write_text(json.dumps(world))
    return folder
