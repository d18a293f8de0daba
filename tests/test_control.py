"""Intensity interpolation (eq. 14–15), schedules, emotion timelines and their errors."""

from __future__ import annotations

import numpy as np
import pytest

from emodiff.cli import main
from emodiff.control import (interpolate_expression, parse_emotions, parse_intensity, plot_schedule,
                             expression_condition)
from emodiff.data.labels import EMOTIONS
from emodiff.errors import EmodiffError
from emodiff.metrics.linearity import flie


def test_interpolation_moves_from_neutral_to_the_emotion():
    rng = np.random.default_rng(0)
    e_n, e_y = rng.normal(size=(2, 5, 4))
    np.testing.assert_allclose(interpolate_expression(e_n, e_y, 0.0), e_n)
    np.testing.assert_allclose(interpolate_expression(e_n, e_y, 1.0), e_y)
    k = np.linspace(0, 1, 5)
    out = interpolate_expression(e_n, e_y, k)
    np.testing.assert_allclose(out[2], e_n[2] + 0.5 * (e_y[2] - e_n[2]))
    # Closer to the emotion as k grows (the corrected direction d_y = e_y − e_n).
    dist = [np.linalg.norm(interpolate_expression(e_n, e_y, v) - e_y) for v in (0.0, 0.3, 0.6, 0.9)]
    assert dist == sorted(dist, reverse=True)


def test_flie_is_zero_for_linear_conditions_and_not_for_a_nonlinear_schedule():
    rng = np.random.default_rng(1)
    T, D = 40, 50
    e_n = rng.normal(0, 0.3, (T, D))
    e_y = e_n + rng.normal(0, 1.0, D) + rng.normal(0, 0.2, (T, D))
    # k = 0, 0.1, ..., 1 as produced by the key-frame parser (11 frames at 10 fps).
    linear_k = parse_intensity("0:0,1:1", 11, 10.0)
    smooth_k = parse_intensity("0:0,1:1", 11, 10.0, interpolation="smooth")
    np.testing.assert_allclose(linear_k, np.linspace(0, 1, 11), atol=1e-6)
    linear = flie([interpolate_expression(e_n, e_y, k) for k in linear_k])
    nonlinear = flie([interpolate_expression(e_n, e_y, k) for k in smooth_k])
    squared = flie([interpolate_expression(e_n, e_y, k ** 2) for k in linear_k])
    print(f"FLIE linear={linear:.2e} smoothstep={nonlinear:.2f} k²={squared:.2f}")
    assert linear < 1e-3
    assert nonlinear > 10 and squared > 10


def test_keyframes_are_held_outside_and_interpolated_between():
    k = parse_intensity("0.4:0.2,1.6:0.9,3:0.4", 100, 25.0)
    t = np.arange(100) / 25.0
    assert np.allclose(k[t <= 0.4], 0.2) and np.allclose(k[t >= 3.0], 0.4)
    np.testing.assert_allclose(k[25], 0.2 + 0.7 * 0.5, atol=1e-6)  # t = 1.0, half way 0.4 → 1.6
    s = parse_intensity("0.4:0.2,1.6:0.9,3:0.4", 100, 25.0, interpolation="smooth")
    np.testing.assert_allclose(s[[10, 25, 40, 75]], k[[10, 25, 40, 75]], atol=1e-6)  # keys and mid-point
    rise = s[(t >= 0.4) & (t <= 1.6)]
    assert np.all(np.diff(rise) >= 0) and abs(rise[1] - rise[0]) < abs(k[14] - k[13])  # eases in
    assert np.allclose(parse_intensity(0.7, 10, 25.0), 0.7) and np.allclose(parse_intensity("1", 3, 25.0), 1.0)


def test_per_frame_files(tmp_path):
    csv = tmp_path / "k.csv"
    csv.write_text("frame,k\n0,0.1\n1,0.5\n2,0.9\n")
    np.testing.assert_allclose(parse_intensity(str(csv), 5, 25.0), [0.1, 0.5, 0.9, 0.9, 0.9], atol=1e-6)
    npy = tmp_path / "k.npy"
    np.save(npy, np.linspace(0, 1, 4))
    np.testing.assert_allclose(parse_intensity(str(npy), 4, 25.0), np.linspace(0, 1, 4), atol=1e-6)


def test_emotion_timeline_cross_fades():
    fps, T = 25.0, 100
    timeline = parse_emotions("happy@0,surprised@2", T, fps)
    w = timeline.weights(T, fps, crossfade=0.4)
    happy, surprised = EMOTIONS.index("happy"), EMOTIONS.index("surprised")
    np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-6)
    assert w[:40, happy].min() > 0.99 and w[60:, surprised].min() > 0.99
    ramp = w[40:61, surprised]
    assert np.all(np.diff(ramp) >= 0) and 0.3 < w[50, surprised] < 0.7
    assert ((w[:, surprised] > 0.01) & (w[:, surprised] < 0.99)).sum() <= 0.4 * fps  # a short cross-fade
    assert np.allclose(parse_emotions("sad", T, fps).weights(T, fps)[:, EMOTIONS.index("sad")], 1.0)

    rng = np.random.default_rng(0)
    targets = rng.normal(size=(len(EMOTIONS), T, 3))
    k = np.full(T, 0.5)
    cond = expression_condition(targets[0], targets, w, k)
    np.testing.assert_allclose(cond[0], 0.5 * (targets[0, 0] + targets[happy, 0]))
    np.testing.assert_allclose(cond[-1], 0.5 * (targets[0, -1] + targets[surprised, -1]))


def test_plot_schedule_writes_a_png(tmp_path):
    k = parse_intensity("0:0.2,1.5:0.9,3:0.4", 100, 25.0)
    w = parse_emotions("happy@0,surprised@2", 100, 25.0).weights(100, 25.0)
    out = plot_schedule(k, 25.0, tmp_path / "k.png", w, title="test")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["k.png"]


def test_cli_preview_writes_the_schedule(tmp_path, capsys):
    assert main(["schedule", "--intensity", "0:0.2,1.5:0.9,3:0.4", "--emotion", "happy@0,sad@2",
                 "--duration", "4", "--plot", str(tmp_path / "k.png"), "--save", str(tmp_path / "k.npy")]) == 0
    assert (tmp_path / "k.png").stat().st_size > 0
    assert np.load(tmp_path / "k.npy").shape == (100,)
    assert "100 frames" in capsys.readouterr().out


@pytest.mark.parametrize("args, words", [
    (["--intensity", "0:0.2,1.5"], "Malformed intensity key frame"),
    (["--intensity", "0:0.2;1:0.5"], "Malformed intensity key frame"),
    (["--intensity", "1:0.2,0.5:0.3"], "strictly increasing"),
    (["--intensity", "1.5"], "outside [0, 1]"),
    (["--intensity", "0:0.2,1:1.2"], "outside [0, 1]"),
    (["--intensity", "0:0.2,9:0.5"], "beyond the audio"),
    (["--intensity", "0.5", "--emotion", "happy@0,sad@7"], "beyond the audio"),
    (["--intensity", "LONG"], "more than the 100 frames"),
    (["--intensity", "BAD"], "outside [0, 1]"),
    (["--intensity", "0.5", "--emotion", "joyful@0"], "valid emotions are: " + ", ".join(EMOTIONS)),
    (["--intensity", "loud"], "not understood"),
    (["--intensity", "audio"], "intensity predictor"),
])
def test_bad_schedules_give_one_sentence_and_exit_1(tmp_path, capsys, args, words):
    np.save(tmp_path / "long.npy", np.full(101, 0.5))
    np.save(tmp_path / "bad.npy", np.array([0.5, -0.2]))
    args = [str(tmp_path / "long.npy") if a == "LONG" else str(tmp_path / "bad.npy") if a == "BAD" else a
            for a in args]
    assert main(["schedule", *args, "--duration", "4", "--plot", str(tmp_path / "k.png")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("emodiff: error: ") and words in err and "\n" not in err and err.endswith(".")
    assert not (tmp_path / "k.png").exists()


def test_library_errors_are_emodiff_errors():
    with pytest.raises(EmodiffError, match="valid emotions"):
        parse_emotions("happy@0,angy@1", 50, 25.0)
    with pytest.raises(EmodiffError, match="Unknown intensity interpolation"):
        parse_intensity("0:0,1:1", 50, 25.0, interpolation="cubic")
