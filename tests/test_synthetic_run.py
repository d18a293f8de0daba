"""`emodiff synthetic-run`: the whole chain on a tiny world, resumable, with a complete report."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from emodiff.cli import main

TINY = ["world.identities=3", "world.held_out=1", "world.clips=8", "world.frames=12", "world.size=16",
        "stages.denoiser.overrides.data.resolution=16", "stages.denoiser.overrides.train.max_steps=2",
        "stages.denoiser.overrides.train.batch_size=4",
        "stages.expression.overrides.data.window=8", "stages.expression.overrides.train.max_steps=2",
        "stages.expression.overrides.train.batch_size=4", "stages.expression.overrides.data.levels=null",
        "stages.intensity.overrides.data.window=8", "stages.intensity.overrides.train.max_steps=2",
        "stages.intensity.overrides.train.batch_size=4",
        "stages.readout.overrides.train.max_steps=2", "stages.readout.overrides.train.batch_size=8",
        "stages.readout.overrides.train.num_workers=0", "stages.readout.overrides.train.eval_samples=16",
        "evaluation.intensities=[0,0.5,1]", "evaluation.audio_clips=1", "evaluation.frames=6", "evaluation.steps=1",
        "evaluation.intensity_clips=4", "evaluation.drift_frames=20",
        "evaluation.drift_window=5"]


def _run(out, overrides=TINY, profile=None) -> int:
    """`emodiff synthetic-run` through the command line's entry point."""
    return main(["synthetic-run", "--out", str(out), *(["--profile", profile] if profile else []), "--set", *overrides])


@pytest.mark.slow
def test_tiny_run_writes_a_complete_report_and_resumes_without_retraining(tmp_path, capsys):
    out = tmp_path / "run"
    assert _run(out) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["counts"]["videos"] == 1 * 1 * 7 * 4  # identity × speech × emotions × (3 k + audio k)
    for source in ("generated", "truth"):
        assert set(metrics[source]["per_emotion"]) == {"angry", "contempt", "disgusted", "fear", "happy", "sad", "surprised"}
    # the true renders are the request itself: identity PSNR of the truth is what the generated frames aim at
    assert metrics["identity"]["psnr_identity_image"] > 10
    report = (out / "report.md").read_text()
    for needed in ("≥ 0.9", "≥ 0.85", "≥ 0.7", "≥ 26", "≤ 1", "FLIE", "PSNR", "Intensity VAE", "drift.png", "contact_sheet.png"):
        assert needed in report
    drift = metrics["drift"]
    assert len(drift["psnr_by_frame"]) == 20 and drift["videos"] == 7 and drift["window"] == 5
    assert drift["drift_db"] == pytest.approx(np.mean(drift["psnr_by_frame"][:5]) - np.mean(drift["psnr_by_frame"][-5:]))
    for figure in ("linearity.png", "mouth.png", "intensity.png", "drift.png", "contact_sheet.png"):
        assert (out / figure).stat().st_size > 1000
    samples = (out / "samples.npz").stat().st_mtime_ns
    capsys.readouterr()
    assert _run(out) == 0  # every stage and the samples are reused
    log = capsys.readouterr().out
    assert all(f"{stage}: finished run" in log for stage in ("denoiser", "expression", "intensity", "readout"))
    assert (out / "samples.npz").stat().st_mtime_ns == samples
    # a drift window longer than half the drift video cannot compare its start with its end
    assert _run(out, [*TINY, "evaluation.drift_window=11"]) == 1
    assert "evaluation.drift_window is 11; it must be between 1 and half of evaluation.drift_frames (20)" in \
        capsys.readouterr().err


def test_bad_profile_or_override_is_one_sentence(tmp_path, capsys):
    cases = [([], "huge", "Profile 'huge' is not in"),
             (["world.identities=[=="], None, "Bad config override"),
             (["world.idenitites=2"], None, r"Unknown config key 'world.idenitites'; valid keys in world: .*identities"),
             # a stage's overrides are checked when the stage applies them
             ([*TINY, "stages.denoiser.overrides.train.max_stpes=2"], None, r"Unknown config key 'train.max_stpes'")]
    for i, (overrides, profile, message) in enumerate(cases):
        assert _run(tmp_path / str(i), overrides, profile) == 1
        err = capsys.readouterr().err  # progress bars of the work done before the error may come first
        errors = [line for line in err.splitlines() if line.startswith("emodiff: error: ")]
        assert len(errors) == 1 and re.search(message, errors[0]) and "Traceback" not in err, err


def test_the_drift_script_measures_a_pipeline_folder_over_a_long_video(tmp_path):
    """scripts/drift_check.py: the synthetic run's drift measure on any pipeline of the synthetic world, sampled with
    the pipeline's own settings unless named, over identities it never saw."""
    import subprocess
    import sys
    from pathlib import Path

    from tests.conftest import write_tiny_pipeline

    checkpoint = write_tiny_pipeline(tmp_path / "pipeline", size=16, world={"seed": 3, "size": 16,
                                                                            "held_out_identities": ["syn005"]})
    script = Path(__file__).resolve().parents[1] / "scripts" / "drift_check.py"
    result = subprocess.run([sys.executable, str(script), str(tmp_path / "out"), "--checkpoint", str(checkpoint),
                             "--frames", "8", "--window", "2", "--identities", "1", "--steps", "1"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    drift = json.loads((tmp_path / "out" / "drift.json").read_text())
    assert drift["identities"] == [5] and drift["videos"] == 7 and len(drift["psnr_by_frame"]) == 8
    curve = drift["psnr_by_frame"]
    assert drift["drift_db"] == pytest.approx(np.mean(curve[:2]) - np.mean(curve[-2:]))
    assert drift["sampling"].startswith("teacher, ddim × 1 steps") and "drift" in result.stdout
    assert (tmp_path / "out" / "drift.png").stat().st_size > 1000
