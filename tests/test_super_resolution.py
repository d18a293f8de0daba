"""The super-resolution stage: it learns (beats bicubic on held-out renders) and resumes exactly, it is a pipeline
component that `emodiff sample --sr` uses and records in the video, flicker, and evaluate's SR reporting."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from emodiff.cli import main
from emodiff.data.media import VideoWriter, probe, read_video
from emodiff.data.store import write_wav
from emodiff.data.synthetic import SyntheticWorld, save_render
from emodiff.metrics.super_resolution import bicubic, describe, flicker, recorded, upscale_frames
from emodiff.models.rrdbnet import RRDBNet
from emodiff.pipeline import EmoDiffPipeline
from tests.conftest import write_random_store, write_tiny_pipeline

TINY = ["data.hr_size=32", "model.scale=2", "model.num_feat=8", "model.num_block=1", "model.num_grow_ch=8",
        "train.batch_size=8", "data.crop=null", "train.num_workers=0", "train.eval_samples=32"]


@pytest.mark.slow
def test_training_on_world_renders_beats_bicubic(tmp_path):
    """16² renders → 32² truth: 400 steps of a tiny RRDBNet beat bicubic on identities of another world seed."""
    out = tmp_path / "run"
    assert main(["train", "super-resolution", "--output-dir", str(out), "--max-steps", "400", "--set", *TINY,
                 "train.learning_rate=3e-3", "degrade.blur=0", "degrade.noise=0", "train.checkpoint_every=400"]) == 0
    metrics = json.loads((out / "super_resolution" / "metrics.json").read_text())
    assert metrics["world_seed"] == 1 and metrics["scale"] == 2
    assert metrics["psnr"] > metrics["psnr_bicubic"] + 0.2
    model = RRDBNet.from_pretrained(out / "super_resolution")
    assert model.config.residual and model.config.scale == 2


@pytest.mark.parametrize("source,gan_weight", [("world", 0.0), ("store", 0.0), ("world", 0.1)])
def test_training_resumes_exactly(tmp_path, source, gan_weight):
    """A run resumed from its step-3 checkpoint ends with the weights of the unbroken run (batches, crops and
    degradations are functions of the step), for rendered pairs, for a store's frames and with the GAN loss."""
    args = ["train", "super-resolution", "--max-steps", "6", "--set", *TINY, "data.crop=16",
            "train.checkpoint_every=3", "train.keep_checkpoints=3", f"train.gan_weight={gan_weight}"]
    if source == "store":
        args += ["--store", str(write_random_store(tmp_path / "store", n_clips=2, n_frames=10, size=32).root)]
    assert main([*args, "--output-dir", str(tmp_path / "straight")]) == 0
    shutil.copytree(tmp_path / "straight", tmp_path / "resumed")
    shutil.rmtree(tmp_path / "resumed" / "checkpoints" / "checkpoint-6")
    shutil.rmtree(tmp_path / "resumed" / "super_resolution")
    assert main([*args, "--output-dir", str(tmp_path / "resumed"), "--resume", "latest"]) == 0
    weights = "super_resolution/diffusion_pytorch_model.safetensors"
    straight, resumed = load_file(tmp_path / "straight" / weights), load_file(tmp_path / "resumed" / weights)
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    assert straight["conv_last.weight"].abs().sum() > 0  # it trained: the residual model starts with a zero last conv


def test_untrained_residual_model_is_bicubic_and_flicker_is_measured():
    model = RRDBNet(scale=4, num_feat=4, num_block=1, num_grow_ch=4, residual=True).eval()
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    torch.testing.assert_close(model.upscale(x), bicubic(x, 4))
    still = np.repeat(np.random.default_rng(0).integers(0, 256, (1, 8, 8, 3), dtype=np.uint8), 5, axis=0)
    assert flicker(still) == 0.0
    assert flicker(upscale_frames(model.upscale, still)) == 0.0  # a still input stays still
    blink = np.zeros((4, 8, 8, 3), np.uint8)
    blink[1::2] = 10
    assert flicker(blink) == pytest.approx(10.0)
    with pytest.raises(ValueError):
        flicker(blink[:1])


@pytest.fixture(scope="module")
def sr_pipeline(tmp_path_factory):
    """A tiny 16² pipeline that carries its own ×4 super-resolution, saved and loaded back, and the same pipeline
    without it; plus a render of its world and four seconds of the world's speech."""
    root = tmp_path_factory.mktemp("sr_pipeline")
    plain = write_tiny_pipeline(root / "plain", size=16, world={"seed": 0, "size": 16})
    pipeline = EmoDiffPipeline.from_pretrained(plain)
    torch.manual_seed(0)
    pipeline.super_resolution = RRDBNet(scale=4, num_feat=4, num_block=1, num_grow_ch=4, residual=True)
    torch.nn.init.normal_(pipeline.super_resolution.conv_last.weight, std=0.05)  # not plain bicubic
    pipeline.save_pretrained(root / "with_sr")
    shutil.copyfile(plain / "synthetic_world.json", root / "with_sr" / "synthetic_world.json")
    world = SyntheticWorld(0, 16)
    save_render(root / "face.png", world, 1000)
    audio, _ = world.speech(10, 0.5, np.random.default_rng(0))
    write_wav(root / "speech.wav", audio)
    return {"plain": plain, "with_sr": root / "with_sr", "face": root / "face.png", "speech": root / "speech.wav",
            "sr": pipeline.super_resolution.eval()}


def test_pipeline_component_round_trip_upscales_each_frame(sr_pipeline):
    loaded = EmoDiffPipeline.from_pretrained(sr_pipeline["with_sr"])
    assert isinstance(loaded.super_resolution, RRDBNet)
    for key, value in sr_pipeline["sr"].state_dict().items():
        torch.testing.assert_close(loaded.super_resolution.state_dict()[key], value)
    plain = EmoDiffPipeline.from_pretrained(sr_pipeline["plain"])
    image = np.array(Image.open(sr_pipeline["face"]).convert("RGB"))
    audio, _ = SyntheticWorld(0, 16).speech(5, 0.5, np.random.default_rng(1))
    videos = [p.conditions(image, audio, "happy", 0.5, seed=0, aligned=True) for p in (plain, loaded)]
    low = [f[0] for _, f in plain.sample(videos[:1], steps=2, progress=False)]
    high = [f[0] for _, f in loaded.sample(videos[1:], steps=2, progress=False)]
    assert high[0].shape == (3, 64, 64)
    # the upscaled frames are the low-resolution ones upscaled: the denoiser still conditions on its own frames
    torch.testing.assert_close(torch.stack(high), sr_pipeline["sr"].upscale(torch.stack(low)))


def test_sample_uses_the_pipelines_own_super_resolution_and_records_it(sr_pipeline, tmp_path):
    args = ["sample", "--checkpoint", str(sr_pipeline["with_sr"]), "--identity", str(sr_pipeline["face"]),
            "--audio", str(sr_pipeline["speech"]), "--emotion", "happy", "--intensity", "0.5", "--steps", "2",
            "--no-progress"]
    assert main([*args, "--out", str(tmp_path / "sr.mp4"), "--sr", "x4"]) == 0
    assert main([*args, "--out", str(tmp_path / "plain.mp4")]) == 0
    sr, plain = probe(tmp_path / "sr.mp4"), probe(tmp_path / "plain.mp4")
    assert (sr.width, sr.height, plain.width) == (64, 64, 16)
    assert (recorded(sr.comment), recorded(plain.comment)) == ("x4 (16 → 64 px)", "none (16 px)")
    assert main([*args, "--out", str(tmp_path / "x2.mp4"), "--sr", "x2"]) == 1  # its own is x4: needs weights


def test_evaluate_reports_super_resolution_and_scores_runs_with_and_without_it(sr_pipeline, tmp_path):
    world_hr, world_lr, rng = SyntheticWorld(0, 64), SyntheticWorld(0, 16), np.random.default_rng(0)
    k = world_hr.intensity_curve(3, 30, rng)
    audio, mouth = world_hr.speech(30, k, rng)
    expression = k[:, None] * world_hr.emotion_direction("happy")
    expression[:, 0] = mouth
    ref, low = tmp_path / "ref", tmp_path / "low"
    for folder, world, comment in ((ref, world_hr, None), (low, world_lr, describe(None, 16))):
        with VideoWriter(folder / "talk.mp4", 25, audio=audio, comment=comment) as writer:
            for frame in world.render(world.identity(3), expression):
                writer.write(frame)
    (low / "broken.mp4").write_bytes(b"not a video")  # left out of both runs, with its reason
    out = tmp_path / "report"
    assert main(["evaluate", "--reference", str(ref), "--run", f"low={low}", "--aligned", "--landmarks", "none",
                 "--expression", "none", "--size", "64", "--out", str(out),
                 "--super-resolution", str(sr_pipeline["with_sr"])]) == 0
    report = json.loads((out / "metrics.json").read_text())
    assert report["settings"]["super-resolution"] == "low: none (16 px), not recorded; low+sr: x4 (16 → 64 px)"
    assert {"low", "low+sr"} <= set(report["metrics"]) and "psnr" in report["metrics"]["low+sr"]
    assert "Cannot read" in report["left_out"]["low/broken"]
    upscaled = np.stack(list(read_video(out / "super_resolved" / "low" / "talk.mp4")))
    assert upscaled.shape == (30, 64, 64, 3)
    assert "super-resolution: low: none (16 px)" in (out / "metrics.md").read_text()
