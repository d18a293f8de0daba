"""`emodiff real-clips` on real fixture clips (EMODIFF_FIXTURES), and what real video revealed about the data path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from emodiff.cli import main
from emodiff.data.media import probe, read_video
from emodiff.diffusion.gaussian import GaussianDiffusion, make_betas
from emodiff.metrics.landmarks import mouth_correlation, mouth_opening

# Small budget: the path users take, end to end, in about two minutes on 2 cores.
SMALL = ["denoiser.train.max_steps=20", "denoiser.train.checkpoint_every=10", "denoiser.train.validate_every=20",
         "denoiser.data.resolution=32", "sample.steps=2", "prepare.workers=1"]


def link(folder: Path, fixtures: Path, names: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).symlink_to(fixtures / name)
    return folder


@pytest.fixture(scope="module")
def small_run(fixtures_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, int]:
    """Two talking clips and one silent MEAD crop through the whole command at the small budget."""
    tmp = tmp_path_factory.mktemp("real_clips")
    clips = link(tmp / "clips", fixtures_dir, ["hdtf_radio2_000.mp4", "talk_retalking_2.mp4", "mead_sad_crop.mp4"])
    out = tmp / "run"
    code = main(["real-clips", str(clips), "--out", str(out), "--report", str(tmp / "docs"), "--set", *SMALL])
    return out, tmp / "docs", code


def test_the_command_writes_the_self_reenactment_report_with_sane_baselines(small_run: tuple[Path, Path, int]) -> None:
    out, docs, code = small_run
    assert code == 0
    report = json.loads((out / "report" / "metrics.json").read_text())
    metrics = report["metrics"]
    assert set(metrics) == {"reference", "model", "model_real_motion", "still", "delayed"}
    # The real segment scored against itself is perfect.
    assert float(metrics["reference"]["psnr"]) == float("inf")  # metrics.json writes ∞ as "inf"
    assert metrics["reference"]["m_lmd"] == 0.0 and metrics["reference"]["mouth_r"] == pytest.approx(1.0)
    assert metrics["reference"]["psnr_drift"] == 0.0
    # A still face has no mouth motion to correlate (what is left is the detector's jitter on the encoded frames);
    # the delayed copy is the right motion at the wrong time.
    assert abs(metrics["still"]["mouth_r"]) < 0.3
    assert abs(metrics["delayed"]["mouth_r"]) < 0.9
    for run in ("still", "delayed"):
        assert {"psnr", "ssim", "m_lmd", "f_lmd", "mouth_r", "psnr_drift"} <= set(metrics[run])
    # The model of 20 steps paints no face the landmark detector finds: its frames are scored all the same, and
    # the landmark metrics say why they are missing.
    assert {"psnr", "ssim", "psnr_drift"} <= set(metrics["model"])
    no_face = report["extras"]["model"].get("not_computed", {}).get("mouth_r", {})
    assert "mouth_r" in metrics["model"] or len(no_face) == 2
    # Only the held-out quarter is scored: the held-out real videos are a quarter of each clip.
    for name in ("hdtf_radio2_000", "talk_retalking_2"):
        train, heldout = (probe(out / "split" / part / f"{name}.mp4").duration for part in ("train", "heldout"))
        assert heldout == pytest.approx((train + heldout) * 0.25, abs=0.04)  # within one frame at 25 fps
        generated, real = (probe(out / "videos" / run / f"{name}.mp4").duration for run in ("model", "real"))
        assert generated == pytest.approx(real, abs=0.04)
    summary = (docs / "real_clips.md").read_text()
    assert "mead_sad_crop.mp4" in summary and "silent" in summary  # left out, with its reason
    for run in ("model", "model_real_motion", "still", "delayed"):
        assert f"| {run} |" in summary
    side = next(read_video(docs / "side_by_side.mp4"))
    assert side.shape[1] == 2 * side.shape[0]  # real | generated
    assert (docs / "contact_sheet.png").stat().st_size > 0


def test_a_rerun_continues_instead_of_starting_again(small_run: tuple[Path, Path, int], fixtures_dir: Path) -> None:
    out, _, _ = small_run
    before = (out / "videos" / "model" / "talk_retalking_2.mp4").stat().st_mtime_ns
    timings = json.loads((out / "timings.json").read_text())
    clips = out.parent / "clips"
    assert main(["real-clips", str(clips), "--out", str(out), "--set", *SMALL]) == 0
    assert (out / "videos" / "model" / "talk_retalking_2.mp4").stat().st_mtime_ns == before
    assert json.loads((out / "timings.json").read_text())["train"] == timings["train"]  # not trained again


def test_timings_add_up_the_sittings_but_keep_the_last_time_of_a_step_done_whole_again(tmp_path: Path) -> None:
    from emodiff.experiments.real_clips import Timings

    timings = Timings(tmp_path / "timings.json")
    timings.add("train", 10.0)
    timings.add("evaluate", 3.0, redone=True)
    again = Timings(tmp_path / "timings.json")  # the next sitting
    again.add("train", 5.0)
    again.add("evaluate", 4.0, redone=True)
    assert json.loads((tmp_path / "timings.json").read_text()) == {"train": 15.0, "evaluate": 4.0}


def test_the_guidance_script_samples_as_the_command_does(small_run: tuple[Path, Path, int], tmp_path: Path) -> None:
    """scripts/real_clips_guidance.py on a finished run: four scored runs (s_a 1 and 2, rolled out and teacher-forced);
    at s_a = 1 its rolled-out frames are the command's own model frames (same pipeline, seed and sampler), up to the
    last frames, whose audio window the cut speech changes."""
    import subprocess
    import sys

    out, _, _ = small_run
    script = Path(__file__).resolve().parents[1] / "scripts" / "real_clips_guidance.py"
    result = subprocess.run([sys.executable, str(script), str(out), str(tmp_path / "guidance"), "--seconds", "0.4",
                             "--cfg-audio", "1", "2", "--steps", "2"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    names = ["cfg_audio_1", "cfg_audio_1_real_motion", "cfg_audio_2", "cfg_audio_2_real_motion"]
    table = result.stdout.split("| run | psnr | ssim | m_lmd | f_lmd | mouth_r |")[-1]  # after the harness's report
    assert [line.split("|")[1].strip() for line in table.splitlines() if line.startswith("| cfg")] == names
    metrics = json.loads((tmp_path / "guidance" / "report" / "metrics.json").read_text())["metrics"]
    assert all(np.isfinite(metrics[name]["psnr"]) for name in names)
    clip = "talk_retalking_2.mp4"
    probed = np.stack(list(read_video(tmp_path / "guidance" / "videos" / "cfg_audio_1" / clip)))
    command = np.stack(list(read_video(out / "videos" / "model" / clip)))[:len(probed)]
    assert len(probed) == 10
    np.testing.assert_allclose(probed[:5].astype(float), command[:5].astype(float), atol=8)


def test_the_audio_script_tables_the_ceiling_and_the_denoisers_use_of_the_speech(small_run: tuple[Path, Path, int],
                                                                                   tmp_path: Path) -> None:
    """scripts/real_clips_audio.py on a finished run: the audio-window → mouth-opening fits (training and held-out r)
    and the mouth-box error with the own, another frame's and the null audio at five noise levels per store."""
    import subprocess
    import sys

    out, _, _ = small_run
    script = Path(__file__).resolve().parents[1] / "scripts" / "real_clips_audio.py"
    result = subprocess.run([sys.executable, str(script), str(out), "--frames", "6", "--out", str(tmp_path / "audio.md")],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [line.split("|")[1:-1] for line in (tmp_path / "audio.md").read_text().splitlines()
            if line.startswith("| ") and not line.startswith("| audio") and not line.startswith("| store")]
    fits, use = rows[:2], rows[2:]
    assert [row[0].strip() for row in fits] == ["ridge", "mlp"]
    assert all(-1 <= float(value) <= 1 for row in fits for value in row[1:])
    assert [(row[0].strip(), int(row[1])) for row in use] == [(part, t) for part in ("train", "heldout")
                                                              for t in (100, 300, 500, 700, 900)]
    assert all(np.isfinite(float(value)) and float(value) >= 0 for row in use for value in row[2:])


def test_a_folder_without_a_usable_clip_is_one_sentence(fixtures_dir: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture) -> None:
    clips = link(tmp_path / "clips", fixtures_dir, ["mead_sad_crop.mp4", "mead_happy_crop.mp4"])
    assert main(["real-clips", str(clips), "--out", str(tmp_path / "run"), "--set", *SMALL]) == 1
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]  # after the progress bar of the split
    assert last.startswith("emodiff: error: No usable clip") and "Traceback" not in err
    assert "silent" in last and "no sound track" in last


def test_real_expression_vectors_carry_the_lips_and_smoothing_takes_them_out(small_run: tuple[Path, Path, int]) -> None:
    """The finding behind `data.expression_smoothing`: on real faces the landmark expression vector holds the mouth
    opening of speech (a linear readout recovers it), so a denoiser conditioned on it learns the lips from it and
    not from the audio, and a constant e_n at sampling shuts the mouth. The 25-frame average leaves little of it."""
    from emodiff.data.datasets import FrameDataset

    out, _, _ = small_run

    def readout_r2(dataset: FrameDataset) -> float:
        xs, ys = [], []
        for c, clip in enumerate(dataset.clips):
            xs.append(np.asarray(dataset.expression(c)))
            opening = mouth_opening(np.asarray(clip.landmarks))
            ys.append(opening - opening.mean())
        x, y = np.concatenate(xs), np.concatenate(ys)
        x = np.c_[x - x.mean(0), np.ones(len(x))]
        fit = x @ np.linalg.lstsq(x, y, rcond=None)[0]
        return 1 - np.sum((y - fit) ** 2) / np.sum(y ** 2)

    raw = readout_r2(FrameDataset(out / "store_train"))
    smoothed = readout_r2(FrameDataset(out / "store_train", expression_smoothing=25))
    assert raw > 0.8, raw
    assert smoothed < raw - 0.4, (raw, smoothed)


def test_mouth_correlation_follows_the_opening_and_scores_a_still_mouth_zero() -> None:
    rng = np.random.default_rng(0)
    base = rng.normal(size=(68, 2)) * 10
    base[36], base[45] = (-20, 0), (20, 0)
    opening = np.sin(np.linspace(0, 12, 60))
    frames = np.repeat(base[None], 60, 0)
    frames[:, [65, 66, 67], 1] += 5 + 4 * opening[:, None]
    assert mouth_opening(frames)[0] > 0
    assert mouth_correlation(frames, frames) == pytest.approx(1.0)
    reversed_mouth = frames.copy()
    reversed_mouth[:, [65, 66, 67], 1] = frames[::-1, [65, 66, 67], 1]
    assert mouth_correlation(frames, reversed_mouth) < 0.5
    assert mouth_correlation(frames, np.repeat(frames[:1], 60, 0)) == 0.0


def test_the_real_clips_loss_weighs_the_noisy_steps_where_the_mouth_must_come_from_the_speech() -> None:
    """docs/real_clips/diagnosis.md item 8: with v-prediction, Min-SNR-γ weighs an error of the predicted frame at the
    noisiest steps by ≈ SNR_t (≈ 0 at t = 900), so the mouth, which only the audio can tell there, was barely trained.
    The shipped config's loss weighs such an error at t = 900 at least a tenth as much as at t = 100."""
    from emodiff.experiments.real_clips import load_experiment_config
    from emodiff.train.common import CONFIG_DIR

    _, denoiser = load_experiment_config(CONFIG_DIR / "real_clips.yaml", [])
    d = denoiser.diffusion
    diffusion = GaussianDiffusion(make_betas(d.beta_schedule, d.num_train_timesteps))
    x0 = torch.zeros(2, 3, 8, 8)
    noise = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    mouth = torch.zeros(2, 1, 8, 8)
    mouth[..., 4:, 2:6] = 1

    def weight_of_a_frame_error(t: int, gamma: float | None) -> float:
        """Lip loss per unit squared error of the predicted frame x̂_0 inside the mouth box."""
        steps = torch.full((2,), t)
        x_t = diffusion.q_sample(x0, steps, noise)
        sigma = float(np.sqrt(1 - diffusion.alphas_cumprod[t]))
        target = diffusion.v_target(x0, steps, noise)
        prediction = target - 0.1 * mouth / sigma  # x̂_0 = √ᾱ·x_t − σ·v̂ is off by 0.1 in the box
        output = torch.cat([prediction, torch.zeros_like(prediction)], 1)
        losses = diffusion.training_losses(output, x0, x_t, steps, noise, mouth_mask=mouth, lambda_lip=1.0,
                                           min_snr_gamma=gamma, prediction_type="v_prediction")
        return float(losses["lip"].mean()) / 0.01

    assert d.prediction_type == "v_prediction"
    shipped = weight_of_a_frame_error(900, d.min_snr_gamma) / weight_of_a_frame_error(100, d.min_snr_gamma)
    min_snr = weight_of_a_frame_error(900, 5.0) / weight_of_a_frame_error(100, 5.0)
    assert shipped >= 0.1 and min_snr < 1e-3, (shipped, min_snr)


def test_v_prediction_loss_is_zero_at_the_true_v_and_implies_the_true_noise() -> None:
    diffusion = GaussianDiffusion(make_betas("linear", 1000))
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.rand(4, 3, 8, 8, generator=g) * 2 - 1, torch.randn(4, 3, 8, 8, generator=g)
    t = torch.tensor([0, 10, 500, 999])
    x_t = diffusion.q_sample(x0, t, noise)
    v = diffusion.v_target(x0, t, noise)
    torch.testing.assert_close(diffusion.eps_from_v(x_t, t, v), noise, atol=1e-4, rtol=1e-4)
    out = torch.cat([v, torch.zeros_like(v)], 1)
    losses = diffusion.training_losses(out, x0, x_t, t, noise, mouth_mask=torch.ones(4, 1, 8, 8), lambda_lip=1.0,
                                       min_snr_gamma=5, prediction_type="v_prediction")
    assert losses["simple"].abs().max() < 1e-8 and losses["lip"].abs().max() < 1e-8
    wrong = diffusion.training_losses(torch.cat([noise, torch.zeros_like(v)], 1), x0, x_t, t, noise,
                                      prediction_type="v_prediction")
    assert (wrong["simple"][2:] > 0.1).all()  # ε is not v where the noise is large (v → −x_0 at t = T)


def test_the_motion_mouth_box_holds_the_lips_of_real_crops_and_not_the_nose_or_eyes(
        small_run: tuple[Path, Path, int]) -> None:
    """configs/real_clips.yaml blanks a fixed box of the motion frames: it must hold the lips of every prepared real
    frame (the crops are centred on the nose tip) and leave the nose tip and eyes, which carry the pose."""
    from emodiff.data.store import ClipStore
    from emodiff.train.common import CONFIG_DIR

    x0, y0, x1, y1 = OmegaConf.load(CONFIG_DIR / "real_clips.yaml").denoiser.unet.motion_mouth_box
    out, _, _ = small_run
    store = ClipStore.open(out / "store_train")
    points = np.concatenate([np.asarray(clip.landmarks) / np.asarray(clip.frames).shape[1] for clip in store.clips()])

    def inside(p: np.ndarray) -> np.ndarray:
        return (p[..., 0] > x0) & (p[..., 0] < x1) & (p[..., 1] > y0) & (p[..., 1] < y1)

    assert inside(points[:, 48:68]).mean() > 0.99  # iBUG 48-67: the lips
    assert not inside(points[:, 30]).any() and not inside(points[:, 36:48]).any()  # nose tip, eyes
