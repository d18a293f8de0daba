"""Audio-to-intensity VAE: learns a hidden intensity from audio loudness and pitch; exact resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from emodiff.cli import main
from emodiff.data.audio_features import extract_audio_features
from emodiff.data.media import SAMPLE_RATE
from emodiff.data.store import ClipStore
from emodiff.models.intensity_vae import IntensityVAE, load_intensity_vae

FPS = 25
HOP = SAMPLE_RATE // FPS


def hidden_intensity(rng: np.random.Generator, n_frames: int) -> np.ndarray:
    """A smooth random curve in [0, 1] (a few random sinusoids)."""
    t = np.arange(n_frames) / FPS
    k = sum(rng.uniform(0.5, 1) * np.sin(2 * np.pi * rng.uniform(0.1, 0.6) * t + rng.uniform(0, 6.3))
            for _ in range(3))
    return ((k - k.min()) / (k.max() - k.min())).astype(np.float32)


def tone_features(rng: np.random.Generator, k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Speech-like tones whose loudness and pitch rise with k (plus syllable envelopes, intonation
    jitter and noise), and their real log-mel features (emodiff.data.audio_features, 320 per frame)."""
    t = np.arange(len(k) * HOP) / SAMPLE_RATE
    k_audio = np.repeat(k, HOP)
    jitter = np.repeat(rng.normal(0, 30, len(k)), HOP)  # intonation unrelated to intensity
    pitch = 120 + 220 * k_audio + jitter
    phase = 2 * np.pi * np.cumsum(pitch) / SAMPLE_RATE
    syllables = 0.3 + 0.7 * np.abs(np.sin(2 * np.pi * rng.uniform(2, 4) * t))
    audio = ((0.05 + 0.45 * k_audio) * syllables * np.sin(phase) + rng.normal(0, 0.03, len(t))).astype(np.float32)
    return extract_audio_features(audio, FPS, kind="mel"), audio


def make_store(root, n_clips: int, n_frames: int = 100, seed: int = 0) -> tuple[ClipStore, list]:
    rng = np.random.default_rng(seed)
    store = ClipStore.create(root)
    held_out = []
    for c in range(n_clips):
        k = hidden_intensity(rng, n_frames)
        feats, audio = tone_features(rng, k)
        clip = store.write_clip(f"c{c:02d}", {"audio_feats": feats, "intensity": k,
                                              "expression": np.zeros((n_frames, 4))},
                                {"emotion": "happy", "level": 3, "fps": FPS}, audio=audio)
        store.append_manifest({"id": clip.clip_id, "status": "ok"})
        held_out.append((feats, k))
    return store, held_out


TINY = ["--set", "data.window=32", "data.stride=8", "model.hidden=32", "model.n_layers=3", "model.n_flows=2",
        "train.batch_size=8", "train.learning_rate=3e-3", "train.kl_warmup_steps=50"]


@pytest.mark.slow
def test_predictor_learns_intensity_from_audio(tmp_path, capsys):
    make_store(tmp_path / "train", 12, seed=0)
    _, test_clips = make_store(tmp_path / "test", 4, seed=1)
    out = tmp_path / "run"
    assert main(["train", "intensity", "--store", str(tmp_path / "train"), "--output-dir", str(out), *TINY,
                 "train.max_steps=250", "train.checkpoint_every=100"]) == 0
    model = load_intensity_vae(out / "model")
    feats = torch.from_numpy(np.stack([f for f, _ in test_clips]).astype(np.float32))
    target = np.stack([k for _, k in test_clips])
    pred = model.predict(feats, temperature=0.0).numpy()
    pearson = [np.corrcoef(p, k)[0, 1] for p, k in zip(pred, target)]
    print(f"held-out Pearson per clip: {np.round(pearson, 3)}, mean {np.mean(pearson):.3f}")
    assert min(pearson) >= 0.7

    # Temperature 0 is deterministic; a positive temperature samples.
    again = model.predict(feats, temperature=0.0, generator=torch.Generator().manual_seed(5)).numpy()
    np.testing.assert_array_equal(pred, again)
    warm = [model.predict(feats, 1.0, torch.Generator().manual_seed(s)).numpy() for s in (1, 2)]
    assert not np.allclose(warm[0], warm[1])

    # The ELBO's KL term is finite (and the reconstruction term small) on held-out data.
    with torch.no_grad():
        terms = model(torch.from_numpy(target), feats)
    print(f"held-out recon={terms['recon'].item():.3f} KL={terms['kl'].item():.3f}")
    assert torch.isfinite(terms["kl"]) and torch.isfinite(terms["recon"])

    # The CLI's 'audio' intensity reads the speech, runs the predictor, then smooths, scales and clips.
    assert main(["schedule", "--intensity", "audio", "--audio", str(tmp_path / "test/clips/c00/audio.wav"),
                 "--predictor", str(out / "model"), "--scale", "1.5", "--clip", "0.1", "0.8",
                 "--smooth-frames", "5", "--save", str(tmp_path / "k.npy"), "--plot", str(tmp_path / "k.png")]) == 0
    k = np.load(tmp_path / "k.npy")
    assert k.shape == (100,) and k.min() >= np.float32(0.1) and k.max() <= np.float32(0.8)
    assert np.corrcoef(k, test_clips[0][1])[0, 1] > 0.6
    np.save(tmp_path / "other.npy", np.zeros((100, 16), np.float32))
    capsys.readouterr()
    assert main(["schedule", "--intensity", "audio", "--audio-features", str(tmp_path / "other.npy"),
                 "--predictor", str(out / "model")]) == 1
    assert "expects (frames, 320)" in capsys.readouterr().err


def test_resume_continues_exactly(tmp_path, capsys):
    make_store(tmp_path / "store", 4, n_frames=48)
    common = ["--store", str(tmp_path / "store"), *TINY, "train.checkpoint_every=3", "train.keep_checkpoints=2"]
    assert main(["train", "intensity", "--output-dir", str(tmp_path / "once"), *common, "train.max_steps=10"]) == 0
    assert main(["train", "intensity", "--output-dir", str(tmp_path / "twice"), *common, "train.max_steps=5"]) == 0
    assert main(["train", "intensity", "--output-dir", str(tmp_path / "twice"), *common, "train.max_steps=10"]) == 1
    assert "pass --resume latest to continue it" in capsys.readouterr().err  # nothing trained over
    assert sorted(p.name for p in (tmp_path / "twice" / "checkpoints").iterdir()) == ["checkpoint-3", "checkpoint-5"]
    assert main(["train", "intensity", "--output-dir", str(tmp_path / "twice"), "--resume", "latest", *common,
                 "train.max_steps=10"]) == 0
    assert sorted(p.name for p in (tmp_path / "twice" / "checkpoints").iterdir()) == ["checkpoint-10", "checkpoint-9"]
    once = IntensityVAE.from_pretrained(tmp_path / "once" / "model").state_dict()
    twice = IntensityVAE.from_pretrained(tmp_path / "twice" / "model").state_dict()
    for name in once:
        torch.testing.assert_close(once[name], twice[name], rtol=0, atol=0, msg=name)


def test_missing_predictor_and_empty_store_are_clear_errors(tmp_path, capsys):
    np.save(tmp_path / "feats.npy", np.zeros((10, 320), np.float32))
    assert main(["schedule", "--intensity", "audio", "--audio-features", str(tmp_path / "feats.npy"),
                 "--predictor", str(tmp_path / "nowhere")]) == 1
    assert "No trained intensity predictor" in capsys.readouterr().err
    ClipStore.create(tmp_path / "empty")
    assert main(["train", "intensity", "--store", str(tmp_path / "empty"), "--output-dir", str(tmp_path / "r")]) == 1
    assert capsys.readouterr().err.startswith("emodiff: error: Nothing to train on")


def test_nan_loss_stops_with_the_step_and_saves_nothing(tmp_path, capsys):
    store = ClipStore.create(tmp_path / "store")
    rng = np.random.default_rng(0)
    for c in range(3):
        k = np.full(48, np.nan, dtype=np.float32)  # broken pseudo intensities
        store.write_clip(f"c{c}", {"audio_feats": rng.normal(size=(48, 320)), "intensity": k,
                                   "expression": np.zeros((48, 4))}, {"fps": FPS})
        store.append_manifest({"id": f"c{c}", "status": "ok"})
    out = tmp_path / "run"
    assert main(["train", "intensity", "--store", str(tmp_path / "store"), "--output-dir", str(out), *TINY,
                 "train.checkpoint_every=1"]) == 1
    err = capsys.readouterr().err
    assert "reconstruction loss became nan at step 1" in err
    assert not (out / "model").exists() and not list((out / "checkpoints").glob("checkpoint-*"))
