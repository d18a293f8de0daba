"""`emodiff sample` end to end with a real face and real speech, and its answers to bad inputs."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from emodiff.assemble import pipeline_from_training
from emodiff.cli import main
from emodiff.data.audio_features import audio_feature_dim
from emodiff.data.media import load_audio, probe, read_video
from emodiff.data.store import write_wav
from emodiff.data.synthetic import WORLD_FILE
from emodiff.models.intensity_vae import IntensityVAE
from emodiff.models.rrdbnet import RRDBNet
from emodiff.pipeline import EmoDiffPipeline
from emodiff.train.common import load_config
from emodiff.train.denoiser import train as train_denoiser
from tests.conftest import write_random_store

FPS = 25
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny denoiser trained for a few steps on a random 16² store with 25 fps mel features, assembled into a
    pipeline and saved like a real one (sampling plumbing: the weights need not be good)."""
    root = tmp_path_factory.mktemp("ckpt")
    store = write_random_store(root / "store", n_clips=8, n_frames=12, size=16,  # every emotion
                               feat_dim=audio_feature_dim("mel", FPS), exp_dim=6)
    config = load_config(REPO / "configs" / "denoiser_tiny.yaml", [
        "train.max_steps=3", "train.batch_size=4", "train.checkpoint_every=100", "train.validate_every=1000",
        f"data.store={store.root}", f"output_dir={root / 'run'}"])
    train_denoiser(config)
    pipeline = pipeline_from_training(root / "run", store)
    pipeline.save_pretrained(root / "pipeline")
    return root / "pipeline"


@pytest.fixture(scope="module")
def media(fixtures_dir, tmp_path_factory):
    """One second of real speech (mono 16 kHz), 0.1 s of it, a silent second, and a two-face image."""
    from PIL import Image

    root = tmp_path_factory.mktemp("media")
    speech = load_audio(fixtures_dir / "speech_radio31_16k.wav")
    paths = {"face": fixtures_dir / "face_happy.png", "speech": root / "speech_1s.wav",
             "short": root / "speech_0.1s.wav", "silent": root / "silent.wav",
             "two_faces": root / "two_faces.png", "no_face": root / "no_face.png"}
    write_wav(paths["speech"], speech[:16000])
    write_wav(paths["short"], speech[:1600])
    write_wav(paths["silent"], np.zeros(16000, dtype=np.float32))
    faces = [np.asarray(Image.open(fixtures_dir / f"face_{e}.png").convert("RGB")) for e in ("happy", "sad")]
    Image.fromarray(np.concatenate(faces, axis=1)).save(paths["two_faces"])
    Image.fromarray(np.full((256, 256, 3), 128, dtype=np.uint8)).save(paths["no_face"])
    return paths


def sample_args(checkpoint, media, out, **overrides) -> list[str]:
    options = {"--checkpoint": checkpoint, "--identity": media["face"], "--audio": media["speech"],
               "--emotion": "happy", "--intensity": "0:0.2,0.6:0.9", "--out": out, "--steps": 2, "--seed": 3}
    options.update(overrides)
    return ["sample", *[str(x) for item in options.items() for x in item], "--no-progress"]


def frames_of(path) -> np.ndarray:
    return np.stack(list(read_video(path, FPS)))


def test_sample_writes_video_with_input_audio_and_is_deterministic(checkpoint, media, tmp_path):
    out = tmp_path / "out.mp4"
    assert main(sample_args(checkpoint, media, out) + ["--preview"]) == 0
    info = probe(out)
    frames = frames_of(out)
    assert abs(len(frames) - 1.0 * FPS) <= 1
    assert frames.shape[1:] == (16, 16, 3)
    assert info.has_audio
    speech = load_audio(media["speech"])
    muxed = load_audio(out)
    assert abs(len(muxed) - len(speech)) <= 16000 / FPS
    n = min(len(muxed), len(speech))
    assert np.corrcoef(muxed[:n], speech[:n])[0, 1] > 0.9  # the input speech survives AAC
    assert (tmp_path / "out.intensity.png").stat().st_size > 0
    assert frames_of(tmp_path / "out.preview.mp4").shape[1:] == (16, 32, 3)

    again = tmp_path / "again.mp4"
    assert main(sample_args(checkpoint, media, again)) == 0
    np.testing.assert_array_equal(frames_of(again), frames)
    other = tmp_path / "other_seed.mp4"
    assert main(sample_args(checkpoint, media, other, **{"--seed": 4})) == 0
    assert np.abs(frames_of(other).astype(int) - frames).mean() > 1


def test_super_resolution_and_audio_predicted_intensity(checkpoint, media, tmp_path):
    pipeline = EmoDiffPipeline.from_pretrained(checkpoint)
    torch.manual_seed(0)
    pipeline.intensity_predictor = IntensityVAE(audio_dim=audio_feature_dim("mel", FPS), hidden=8, latent_channels=2,
                                                n_layers=1, n_flows=1)
    pipeline.save_pretrained(tmp_path / "with_predictor")
    sr_weights = tmp_path / "RealESRGAN_tiny_x2.pth"
    torch.save({"params_ema": RRDBNet(scale=2, num_feat=8, num_block=1, num_grow_ch=4).state_dict()}, sr_weights)
    out = tmp_path / "sr.mp4"
    args = sample_args(tmp_path / "with_predictor", media, out, **{"--intensity": "audio"})
    assert main(args + ["--sr", "x2", "--sr-weights", str(sr_weights)]) == 0
    assert frames_of(out).shape[1:] == (32, 32, 3)
    assert (tmp_path / "sr.intensity.png").is_file()
    assert main(sample_args(checkpoint, media, tmp_path / "no_predictor.mp4", **{"--intensity": "audio"})) == 1


def test_jobs_file_samples_a_batch_like_single_runs(checkpoint, media, tmp_path, capsys):
    jobs = tmp_path / "jobs.jsonl"
    entries = [{"identity": str(media["face"]), "audio": str(media["speech"]), "emotion": "happy@0,sad@0.5",
                "intensity": "0.8", "out": str(tmp_path / "a.mp4"), "seed": 1},
               {"identity": str(media["face"]), "audio": str(media["speech"]), "emotion": "angry",
                "intensity": "0.3", "out": str(tmp_path / "b.mp4"), "seed": 2},
               {"identity": str(media["face"]), "audio": str(media["speech"]), "emotion": "bored",
                "intensity": "0.3", "out": str(tmp_path / "c.mp4")}]
    jobs.write_text("\n".join(json.dumps(e) for e in entries))
    # the bad third job is reported and skipped; the others are sampled; the exit status says one failed
    assert main(["sample", "--checkpoint", str(checkpoint), "--jobs", str(jobs), "--batch-size", "2",
                 "--steps", "2", "--no-progress"]) == 1
    assert "c.mp4: Unknown emotion 'bored'" in capsys.readouterr().err
    assert not (tmp_path / "c.mp4").exists()
    single = tmp_path / "single.mp4"
    assert main(sample_args(checkpoint, media, single, **{"--emotion": "angry", "--intensity": "0.3",
                                                          "--seed": 2})) == 0
    # Batched convolutions round differently (which kernel runs depends on the batch and the process's memory); a
    # random (untrained) denoiser amplifies that, and the rollout feeds it back frame after frame (a CI run in the
    # suite measured a mean difference of 2.7 over the first three frames), so only the first frame, which has no
    # generated motion frames, is compared (the pipeline tests check the batched maths itself).
    difference = np.abs(frames_of(tmp_path / "b.mp4")[:1].astype(int) - frames_of(single)[:1])
    assert difference.mean() < 1.0
    assert len(frames_of(tmp_path / "a.mp4")) == len(frames_of(single))


@pytest.mark.parametrize("case,overrides,message", [
    ("no face", {"--identity": "no_face"}, "exactly one face"),
    ("two faces", {"--identity": "two_faces"}, "exactly one face"),
    ("silent audio", {"--audio": "silent"}, "silent"),
    ("0.1 s audio", {"--audio": "short"}, "at least"),
    ("unknown emotion", {"--emotion": "ecstatic"}, "valid emotions are"),
    ("broken schedule", {"--intensity": "0:0.2,zz"}, "ey frame|ntensity"),
    ("intensity above 1", {"--intensity": "1.5"}, "outside"),
    ("missing checkpoint", {"--checkpoint": "missing_ckpt"}, "model_index.json is missing"),
    ("corrupt checkpoint", {"--checkpoint": "corrupt_ckpt"}, "Cannot load the unet"),
    ("missing sr weights", {"--sr": "x4", "--sr-weights": "nowhere.pth"}, "RealESRGAN_x4plus.pth"),
])
def test_bad_inputs_give_one_sentence_and_no_video(case, overrides, message, checkpoint, media, tmp_path, capsys):
    if case == "corrupt checkpoint":
        shutil.copytree(checkpoint, tmp_path / "corrupt_ckpt")
        weights = tmp_path / "corrupt_ckpt" / "unet" / "diffusion_pytorch_model.safetensors"
        weights.write_bytes(b"\0" * 64)
    resolved = {key: media.get(value, tmp_path / value if "ckpt" in value else value) for key, value in overrides.items()}
    out = tmp_path / "video.mp4"
    assert main(sample_args(checkpoint, media, out, **resolved)) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("emodiff: error:") and len(err.splitlines()) == 1 and "Traceback" not in err
    assert re.search(message, err), err
    assert not any(p.suffix in (".mp4", ".png") for p in tmp_path.iterdir()), list(tmp_path.iterdir())


def test_a_photo_with_a_synthetic_world_pipeline_gets_one_warning_sentence_and_mediapipe_logs_only_when_verbose(
        checkpoint, media, tmp_path):
    """Run as users do (a fresh process: mediapipe's C++ logging writes to file descriptor 2)."""
    synthetic = tmp_path / "synthetic_pipeline"
    shutil.copytree(checkpoint, synthetic)
    (synthetic / WORLD_FILE).write_text(json.dumps({"seed": 0, "size": 32}))
    argv = [sys.executable, "-m", "emodiff", *sample_args(synthetic, media, tmp_path / "photo.mp4", **{"--steps": 1})]
    quiet = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert quiet.returncode == 0, quiet.stderr
    lines = quiet.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("emodiff: warning: The pipeline ") and lines[0].count(". ") == 0
    assert "face_happy.png, which is not one of its renders" in lines[0] and "emodiff demo" in lines[0]
    assert (tmp_path / "photo.mp4").is_file()  # a warning, not a refusal
    verbose = subprocess.run(argv + ["--verbose"], capture_output=True, text=True, timeout=300)
    assert verbose.returncode == 0 and re.search(r"W0000|TensorFlow Lite", verbose.stderr), verbose.stderr
