"""Distillation (`emodiff train distill`): the student learns to reproduce the guided teacher in few steps,
resumes exactly, and its pipeline samples with one forward per step and the baked guidance only."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from emodiff.assemble import pipeline_from_training
from emodiff.cli import main
from emodiff.data.labels import EMOTIONS
from emodiff.errors import EmodiffError
from emodiff.pipeline import EmoDiffPipeline, VideoConditions
from tests.test_train_denoiser import SIZE, TINY, write_disc_store

pytestmark = pytest.mark.slow  # trains a teacher (200 steps) and distils it

AUDIO_DIM, EXP_DIM = 4, 6
SETTINGS = ["couplings.count=96", "couplings.batch_size=48", "couplings.validation=32", "teacher_sampling.steps=8",
            "teacher_sampling.cfg_expression=2.0", "train.batch_size=16", "train.learning_rate=1e-3",
            "train.warmup_steps=10", "train.ema_decay=0.9", "train.checkpoint_every=100", "train.log_every=50",
            "train.validate_every=100000"]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> tuple[Path, Path]:
    """A teacher pipeline trained 200 steps on the disc world (with motion-frame noise) and that world's store."""
    root = tmp_path_factory.mktemp("distill")
    store = write_disc_store(root / "store")
    assert main(["train", "denoiser", "--config", str(TINY), "--store", str(store.root), "--output-dir",
                 str(root / "denoiser"), "--max-steps", "200", "--set", "train.checkpoint_every=200",
                 "train.validate_every=1000"]) == 0
    pipeline_from_training(root / "denoiser", store).save_pretrained(root / "teacher")
    return root / "teacher", store.root


def distill(teacher: tuple[Path, Path], out: Path, steps: int, *extra: str, resume: str | None = None) -> int:
    argv = ["train", "distill", "--teacher", str(teacher[0]), "--store", str(teacher[1]), "--output-dir", str(out),
            "--max-steps", str(steps), "--set", *SETTINGS, *extra]
    return main(argv + (["--resume", resume] if resume else []))


def video(n_frames: int = 3) -> VideoConditions:
    gen = torch.Generator().manual_seed(1)
    weights = torch.zeros(n_frames, len(EMOTIONS))
    weights[:, EMOTIONS.index("happy")] = 1
    return VideoConditions(identity=torch.rand(3, SIZE, SIZE, generator=gen) * 2 - 1,
                           audio=torch.randn(n_frames, AUDIO_DIM, generator=gen),
                           expression=torch.randn(n_frames, EXP_DIM, generator=gen),
                           intensity=torch.full((n_frames,), 0.5), emotion_weights=weights)


@pytest.fixture(scope="module")
def distilled(teacher, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("student")
    assert distill(teacher, out, 200) == 0
    return out


def test_student_reproduces_the_guided_teacher_in_few_steps(distilled):
    """On held-out couplings the student at 1, 2 and 4 steps is much closer to the teacher's 8-step guided frames than
    the teacher itself at as few steps, and closer with more steps; before training it is not (step 0 = the teacher's
    weights read as v)."""
    report = json.loads((distilled / "validation.json").read_text())
    student, teacher = report["student_psnr"], report["teacher_psnr"]
    for k in ("1", "2", "4"):
        assert student[k] > teacher[k] + 3.0, report
    assert student["4"] > student["1"] - 0.5, report


def test_student_pipeline_samples_with_one_forward_per_step_and_its_baked_guidance(distilled):
    pipeline = EmoDiffPipeline.from_pretrained(distilled / "pipeline")
    assert pipeline.default_steps == 4 and pipeline.guidance_baked == (1.0, 2.0)
    assert pipeline.unet.config.prediction_type == "v_prediction"
    batch_sizes = []
    pipeline.unet.register_forward_pre_hook(lambda module, args: batch_sizes.append(args[0].shape[0]))
    frames = [batch[0] for _, batch in pipeline.sample([video()], progress=False)]
    assert len(frames) == 3 and all(torch.isfinite(f).all() for f in frames)
    assert batch_sizes == [1] * 4 * 3  # 4 steps per frame, one conditional row: the guidance is in the weights
    assert pipeline.forwards_per_frame(pipeline.default_steps) == 4
    with pytest.raises(EmodiffError, match="distilled with guidance audio 1 / expression 2 baked in"):
        next(pipeline.sample([video()], cfg_expression=3.0, progress=False))
    with pytest.raises(EmodiffError, match="predicts v, and emodiff.s ddpm sampler is for ε-prediction"):
        next(pipeline.sample([video()], sampler="ddpm", progress=False))


def test_distillation_resumes_exactly(teacher, distilled, tmp_path):
    """A run stopped at step 10 and resumed to 20 ends with the weights of an unbroken 20-step run (same couplings)."""
    broken, whole = tmp_path / "broken", tmp_path / "whole"
    assert distill(teacher, broken, 10, "train.checkpoint_every=10") == 0
    assert distill(teacher, broken, 20, "train.checkpoint_every=10", resume="latest") == 0
    assert distill(teacher, whole, 20, "train.checkpoint_every=10") == 0
    a = load_file(str(broken / "unet" / "diffusion_pytorch_model.safetensors"))
    b = load_file(str(whole / "unet" / "diffusion_pytorch_model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    # the couplings are the teacher's, drawn once from a fixed seed
    torch.testing.assert_close(load_file(str(broken / "couplings.safetensors"))["sample"],
                               load_file(str(distilled / "couplings.safetensors"))["sample"])


def test_distill_refuses_a_missing_teacher_and_a_distilled_one(distilled, teacher, tmp_path, capsys):
    assert main(["train", "distill", "--store", str(teacher[1]), "--output-dir", str(tmp_path / "a")]) == 1
    assert "No teacher pipeline given" in capsys.readouterr().err
    assert distill((distilled / "pipeline", teacher[1]), tmp_path / "b", 1) == 1
    assert "already distilled" in capsys.readouterr().err
    assert distill((tmp_path / "nothing", teacher[1]), tmp_path / "c", 1) == 1
    assert "model_index.json is missing" in capsys.readouterr().err
