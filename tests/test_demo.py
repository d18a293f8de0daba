"""`emodiff demo`: the mp4 with speech, the intensity plot and the contact sheet; a missing checkpoint is one sentence."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from matplotlib import image as mpimg

from emodiff import demo
from emodiff.cli import main as cli_main
from emodiff.data.media import SAMPLE_RATE, load_audio, probe, read_video
from emodiff.data.synthetic import render_origin
from emodiff.diffusion.schedulers import make_scheduler, scheduler_betas
from emodiff.models.rrdbnet import RRDBNet
from emodiff.pipeline import EmoDiffPipeline
from tests.conftest import write_tiny_pipeline

FPS = 25


@pytest.fixture(scope="module")
def tiny_pipeline(tmp_path_factory) -> Path:
    """An untrained 16² pipeline folder with the world description of its store."""
    return write_tiny_pipeline(tmp_path_factory.mktemp("tiny") / "pipeline", size=16, fps=FPS,
                               world={"seed": 3, "size": 32, "held_out_identities": ["syn005", "syn006"]})


def test_demo_samples_with_the_pipelines_own_sampler_and_says_which(tiny_pipeline, tmp_path, capsys):
    checkpoint = tmp_path / "dpm"
    shutil.copytree(tiny_pipeline, checkpoint)
    pipeline = EmoDiffPipeline.from_pretrained(checkpoint)
    pipeline.scheduler = make_scheduler("dpm++", scheduler_betas(pipeline.scheduler))
    pipeline.save_pretrained(checkpoint)
    assert cli_main(["demo", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "demo"), "--steps", "1"]) == 0
    assert "demo: teacher, dpm++ × 1 steps, guidance audio 1 / expression 1: 1 UNet forwards per frame" in \
        capsys.readouterr().out


def test_demo_prints_its_request_as_an_emodiff_sample_command_that_runs(tiny_pipeline, tmp_path, capsys, monkeypatch):
    """The demo builds the `SampleRequest` that `emodiff sample` and the app run; its command, run in the demo's folder
    on the inputs the demo wrote, makes a video of the same length (the speech goes through speech.wav)."""
    import shlex

    out = tmp_path / "demo"
    assert cli_main(["demo", "--checkpoint", str(tiny_pipeline), "--out", str(out), "--steps", "1"]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if "the same request through" in line)
    command = shlex.split(line[line.index(": emodiff sample") + 2:])
    assert command[:2] == ["emodiff", "sample"] and "--sr" not in command  # the tiny pipeline has no SR
    monkeypatch.chdir(out)
    assert cli_main(command[1:]) == 0
    assert sum(1 for _ in read_video(out / "talking_head.mp4", FPS)) == sum(1 for _ in read_video(out / "demo.mp4", FPS))


def test_demo_writes_the_video_with_speech_the_intensity_plot_and_the_contact_sheet(tiny_pipeline, tmp_path, capsys):
    out = tmp_path / "demo"
    assert cli_main(["demo", "--checkpoint", str(tiny_pipeline), "--out", str(out), "--steps", "2"]) == 0
    printed = capsys.readouterr().out
    assert "syn005" in printed and "seed 3" in printed  # the held-out identity of the recorded world
    video = out / "demo.mp4"
    info = probe(video)
    assert info.has_audio
    n_frames = sum(1 for _ in read_video(video, FPS))
    audio_frames = len(load_audio(video)) / SAMPLE_RATE * FPS
    assert abs(n_frames - audio_frames) <= 1 and abs(n_frames - demo.SECONDS * FPS) <= 1
    assert info.width >= demo.VIEW_SIZE  # enlarged for watching
    for name in ("intensity.png", "contact_sheet.png"):
        image = mpimg.imread(out / name)
        assert image.shape[0] > 100 and image.std() > 0.05, name
        assert str(out / name) in printed
    assert render_origin(out / "identity.png") == {"seed": 3, "size": 32, "identity": 5}  # `emodiff sample` knows it
    assert abs(len(load_audio(out / "speech.wav")) - len(load_audio(video))) < 0.05 * SAMPLE_RATE
    assert sorted(p.name for p in out.iterdir()) == ["contact_sheet.png", "demo.mp4", "identity.png", "intensity.png",
                                                     "speech.wav"]


def test_demo_keeps_the_pipelines_own_super_resolution(tiny_pipeline, tmp_path, capsys):
    """The bundled pipeline carries a ×4 SR; the demo samples with it (`emodiff sample` only with --sr)."""
    folder = tmp_path / "with_sr"
    shutil.copytree(tiny_pipeline, folder)
    pipeline = EmoDiffPipeline.from_pretrained(folder)
    pipeline.super_resolution = RRDBNet(scale=2, num_feat=4, num_block=1, num_grow_ch=4, residual=True)
    pipeline.save_pretrained(folder)
    assert cli_main(["demo", "--checkpoint", str(folder), "--out", str(tmp_path / "demo"), "--steps", "1"]) == 0
    assert "super-resolution x2 (16 → 32 px)" in capsys.readouterr().out


def test_missing_checkpoint_is_one_sentence_that_says_how_to_make_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(demo, "bundled_checkpoint", lambda: tmp_path / "assets" / "demo")
    out = tmp_path / "out"
    for argv in (["demo", "--out", str(out)], ["demo", "--checkpoint", str(tmp_path / "nowhere"), "--out", str(out)]):
        assert cli_main(argv) == 1
        err = capsys.readouterr().err
        assert err.startswith("emodiff: error: No demo pipeline at") and "scripts/train_synthetic.sh" in err
        assert "Traceback" not in err and err.count("\n") == 1
    assert not out.exists()
