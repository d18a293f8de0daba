import json
import shutil

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from emodiff import cli
from emodiff.data.datasets import EYES, MOUTH, FrameDataset, SequenceDataset, region_mask
from emodiff.data.labels import EMOTIONS
from emodiff.data.media import SAMPLE_RATE, load_audio, read_video
from emodiff.data.store import ClipStore, read_wav
from emodiff.data.synthetic import (
    EMOTION_DIRECTIONS, EXPRESSION_DIM, EXPRESSION_PARAMS, MOUTH_OPEN, SyntheticWorld, export_videos, make_store,
)
from emodiff.errors import EmodiffError
from emodiff.models.readout import ExpressionReadout
from emodiff.train import readout as readout_training
from emodiff.train.readout import DEFAULT_CONFIG, augment, train


def _param(name: str, value: float) -> np.ndarray:
    e = np.zeros((1, len(EXPRESSION_PARAMS)))
    e[0, EXPRESSION_PARAMS.index(name)] = value
    return e


def test_world_is_deterministic_for_a_seed_and_differs_across_seeds():
    a, b, c = SyntheticWorld(7, 48), SyntheticWorld(7, 48), SyntheticWorld(8, 48)
    expr = np.random.default_rng(0).normal(0, 0.5, (4, 8))
    assert np.array_equal(a.render(a.identity(3), expr), b.render(b.identity(3), expr))
    assert not np.array_equal(a.render(a.identity(3), expr), c.render(c.identity(3), expr))
    assert not np.array_equal(a.render(a.identity(3), expr), a.render(a.identity(4), expr))
    clip_a = a.sample_clip(2, "happy", 3, 20, np.random.default_rng(5))
    clip_b = b.sample_clip(2, "happy", 3, 20, np.random.default_rng(5))
    for name in ("frames", "audio", "expression", "intensity", "landmarks"):
        assert np.array_equal(getattr(clip_a, name), getattr(clip_b, name)), name


def test_emotions_are_distinct_unit_directions_and_neutral_is_the_origin():
    assert EMOTION_DIRECTIONS.shape == (len(EMOTIONS), len(EXPRESSION_PARAMS))
    assert np.array_equal(SyntheticWorld.emotion_direction("neutral"), np.zeros(8))
    emotional = EMOTION_DIRECTIONS[1:]
    assert np.allclose(np.linalg.norm(emotional, axis=1), 1.0)
    assert np.all(emotional[:, MOUTH_OPEN] == 0)  # the mouth-open channel belongs to speech
    cosines = emotional @ emotional.T
    assert cosines[~np.eye(7, dtype=bool)].max() < 0.75
    # and they look different: at k = 1 every pair of emotions (neutral included) differs in pixels
    world = SyntheticWorld(0, 64)
    frames = world.render(world.identity(0), EMOTION_DIRECTIONS).astype(float)
    gaps = np.abs(frames[:, None] - frames[None]).mean(axis=(2, 3, 4))
    assert gaps[~np.eye(8, dtype=bool)].min() > 0.2  # grey levels over the whole image; measured ≥ 0.37


def test_any_size_renders_and_landmarks_scale_with_it():
    expr = _param("smile", 0.8)
    lm = {s: SyntheticWorld(1, s).landmarks(SyntheticWorld(1, s).identity(0), expr)[0] for s in (32, 128)}
    assert np.allclose((lm[32] + 0.5) * 4, lm[128] + 0.5, atol=1e-3)
    assert SyntheticWorld(1, 32).render(SyntheticWorld(1, 32).identity(0), expr).shape == (1, 32, 32, 3)
    with pytest.raises(EmodiffError):
        SyntheticWorld(0, 4)


@pytest.mark.parametrize("name, region", [("mouth_open", MOUTH), ("lip_press", MOUTH), ("smile", MOUTH), ("eye_open", EYES)])
def test_pixels_that_move_with_a_feature_lie_inside_its_landmark_mask(name, region):
    world = SyntheticWorld(3, 64)
    for i in range(3):
        idn = world.identity(i)
        expr = np.concatenate([np.zeros((1, 8)), _param(name, 0.9)])
        frames = world.render(idn, expr).astype(int)
        changed = np.abs(frames[1] - frames[0]).max(axis=-1) > 8
        assert changed.sum() > 10
        lms = world.landmarks(idn, expr)
        mask = np.maximum(region_mask(lms[0, region], 64), region_mask(lms[1, region], 64))
        assert mask[changed].all(), f"{name}: {int((~mask.astype(bool) & changed).sum())} moving pixels outside the mask"


def _pitch_hz(audio: np.ndarray) -> float:
    spectrum = np.fft.rfft(audio, 2 * len(audio))
    ac = np.fft.irfft(np.abs(spectrum) ** 2)[: len(audio)]
    lo, hi = SAMPLE_RATE // 500, SAMPLE_RATE // 70
    return SAMPLE_RATE / (lo + int(np.argmax(ac[lo:hi])))


def test_speech_is_louder_and_higher_with_intensity_and_its_energy_follows_the_mouth():
    world = SyntheticWorld(0, 32, fps=25)
    calm, _ = world.speech(100, 0.1, np.random.default_rng(1))
    intense, mouth = world.speech(100, 0.9, np.random.default_rng(1))
    assert len(intense) == 100 * SAMPLE_RATE // 25
    assert np.sqrt(np.mean(intense ** 2)) > 1.8 * np.sqrt(np.mean(calm ** 2))
    assert _pitch_hz(intense) > 1.25 * _pitch_hz(calm)
    energy = np.sqrt((intense.reshape(100, -1) ** 2).mean(axis=1))
    assert np.corrcoef(energy, mouth)[0, 1] > 0.8
    assert mouth.min() >= 0 and mouth.max() <= 1 and mouth.max() > 0.4
    with pytest.raises(EmodiffError):
        world.speech(10, 1.5, np.random.default_rng(0))


def test_store_honours_the_clip_contract(tmp_path):
    store = make_store(tmp_path / "syn", n_identities=3, clips_per_identity=3, n_frames=20, size=32,
                       levels=(1, 3), held_out_identities=1)
    ids = store.clip_ids()
    assert len(ids) == 9
    manifest = store.manifest()
    for i in range(3):  # every identity has a neutral clip (MEAD-like)
        assert f"syn{i:03d}_neutral_1_000" in ids
    assert {e["split"] for e in manifest.values() if e["identity"] == "syn002"} == {"test"}
    clip = store.clip(ids[0])
    assert clip.frames.shape == (20, 32, 32, 3) and clip.frames.dtype == np.uint8
    assert clip.expression.shape == (20, EXPRESSION_DIM) and not np.any(clip.expression[:, 8:])
    for c in map(store.clip, ids):  # the mouth is not in the condition but its own array (FLAME's jaw pose)
        assert not np.any(c.expression[:, MOUTH_OPEN])
        mouth = np.load(c.path / "mouth_open.npy")
        assert mouth.shape == (20,) and mouth.min() >= 0 and mouth.max() > 0.2
    assert clip.landmarks.shape == (20, 68, 2) and clip.intensity.shape == (20,)
    assert len(clip.audio()[0]) == 20 * SAMPLE_RATE // 25
    happy_like = [store.clip(i) for i in ids if "neutral" not in i]
    for c in happy_like:
        k = np.asarray(c.intensity)
        assert 0 <= k.min() and k.max() <= 1 and k.std() > 0
        d = SyntheticWorld.emotion_direction(c.emotion)
        residual = np.asarray(c.expression[:, 1:8]) - k[:, None] * d[1:]
        assert np.abs(residual).max() < 0.1  # e(t) = k(t)·d + small noise
    assert np.all(np.asarray(store.clip("syn000_neutral_1_000").intensity) == 0)
    frame = FrameDataset(store)[5]
    assert frame["mouth_mask"].sum() > 0 and frame["target"].shape == (3, 32, 32)
    seq = SequenceDataset(store, length=8, require_audio=True)
    assert seq[0]["expression"].shape == (8, EXPRESSION_DIM)
    # re-running keeps finished clips (resume) and gives the same arrays
    before = np.array(store.clip(ids[3]).frames)
    make_store(tmp_path / "syn", n_identities=3, clips_per_identity=3, n_frames=20, size=32,
               levels=(1, 3), held_out_identities=1)
    assert np.array_equal(before, store.clip(ids[3]).frames)


def test_clips_export_to_mp4_with_their_audio(tmp_path):
    store = make_store(tmp_path / "syn", n_identities=1, clips_per_identity=2, n_frames=25, size=32)
    clip_id = store.clip_ids()[0]
    (video,) = export_videos(store, tmp_path / "view", [clip_id], upscale=2)
    frames = np.stack(list(read_video(video, fps=25)))
    expected = np.asarray(store.clip(clip_id).frames).repeat(2, axis=1).repeat(2, axis=2)
    assert frames.shape == expected.shape
    assert np.abs(frames.astype(float) - expected).mean() < 8  # H.264 is lossy
    audio, _ = store.clip(clip_id).audio()
    assert abs(len(load_audio(video)) - len(audio)) < 0.05 * SAMPLE_RATE
    assert np.allclose(read_wav(video.with_suffix(".wav"))[0], audio, atol=1e-3)


def test_a_briefly_trained_readout_recovers_mouth_opening_and_emotion_on_held_out_faces(tmp_path):
    """`emodiff train readout` through the command line's entry point, then the saved model on another world."""
    assert cli.main(["train", "readout", "--output-dir", str(tmp_path / "readout"), "--max-steps", "500", "--set",
                     "model.resolution=32", "model.channels=[16,32,32]", "model.hidden=128", "train.batch_size=32",
                     "train.identities_per_batch=8", "train.num_workers=0", "train.eval_samples=512"]) == 0
    out = tmp_path / "readout" / "model"
    metrics = json.loads((out / "metrics.json").read_text())
    # measured after 500 steps: R² mouth_open ≈ 0.76, emotion accuracy ≈ 0.52 (chance 0.125)
    assert metrics["r2"]["mouth_open"] > 0.5
    assert metrics["emotion_accuracy_k_ge_0.5"] > 0.35
    readout = ExpressionReadout.from_pretrained(out)
    world = SyntheticWorld(5, 64)  # another world seed and a larger size: frames are resized on the way in
    closed_open = np.zeros((2, 8))
    closed_open[1, MOUTH_OPEN] = 1.0
    expression, probabilities = readout.read(world.render(world.identity(0), closed_open))
    assert expression[1, MOUTH_OPEN] > expression[0, MOUTH_OPEN] + 0.3
    assert np.allclose(probabilities.sum(1), 1.0, atol=1e-5)
    # it measures intensity: the read expression's projection on d_emotion grows linearly with k
    k = np.linspace(0.0, 1.0, 5)
    for direction in EMOTION_DIRECTIONS[1:]:
        read = np.mean([readout.read(world.render(world.identity(i), k[:, None] * direction))[0] @ direction
                        for i in range(2)], axis=0)
        assert np.corrcoef(k, read)[0, 1] > 0.9  # measured ≥ 0.99 for every emotion


def test_readout_training_reports_a_bad_config_in_one_sentence(tmp_path, capsys):
    assert cli.main(["train", "readout", "--config", str(tmp_path / "missing.yaml")]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_synthesize_command_writes_a_store_and_rejects_bad_input_in_one_sentence(tmp_path, capsys):
    root = tmp_path / "syn"
    assert cli.main(["synthesize", str(root), "--identities", "2", "--clips", "2", "--frames", "10", "--size", "32"]) == 0
    assert len(ClipStore.open(root).clip_ids()) == 4
    assert cli.main(["synthesize", str(root), "--identities", "2", "--frames", "12", "--size", "32"]) == 1
    assert "n_frames" in capsys.readouterr().err  # a resumed store must keep its world
    assert cli.main(["synthesize", str(tmp_path / "b"), "--emotions", "bored"]) == 1
    assert "valid emotions are" in capsys.readouterr().err
    assert cli.main(["synthesize", str(tmp_path / "c"), "--size", "8"]) == 1
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()


def test_readout_training_resumes_exactly_from_its_last_checkpoint(tmp_path, monkeypatch):
    config = OmegaConf.merge(OmegaConf.load(DEFAULT_CONFIG), OmegaConf.create({
        "output_dir": str(tmp_path / "readout"),
        "model": {"resolution": 16, "channels": [8, 8], "hidden": 16},
        "train": {"max_steps": 6, "batch_size": 8, "identities_per_batch": 2, "num_workers": 0, "eval_samples": 16,
                  "checkpoint_every": 3},
    }))
    out = train(config)
    unbroken = load_file(out / "diffusion_pytorch_model.safetensors")
    shutil.rmtree(out)  # as if the run had been killed after its checkpoint at step 3
    shutil.rmtree(out.parent / "checkpoints" / "checkpoint-6")
    with pytest.raises(EmodiffError, match="--resume latest"):
        train(config)  # a folder with checkpoints is never trained over from scratch
    with pytest.raises(EmodiffError, match="max_steps"):
        train(OmegaConf.merge(config, {"train": {"steps": 6}}), resume="latest")
    steps_run = []
    monkeypatch.setattr(readout_training, "augment", lambda images, *args: steps_run.append(1) or augment(images, *args))
    resumed = load_file(train(config, resume="latest") / "diffusion_pytorch_model.safetensors")
    assert len(steps_run) == 3  # steps 4, 5, 6 only
    assert all(torch.equal(unbroken[k], resumed[k]) for k in unbroken)
