"""The evaluation harness, the EmoAcc classifier stage and `emodiff evaluate` error handling."""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from emodiff.cli import main
from emodiff.data import media
from emodiff.data.labels import EMOTIONS
from emodiff.data.store import ClipStore
from emodiff.metrics import frechet
from emodiff.metrics.emotion import emotion_accuracy, frame_logits, video_prediction
from emodiff.models.emotion_classifier import EmotionClassifier
from emodiff.metrics.lpips import LPIPS
from emodiff.metrics.report import report_markdown, write_report
from emodiff.metrics.table import Weights, evaluate_runs
from emodiff.metrics.videos import Video
from tests.test_metrics import _alex_files, _TinyI3D, _TinyInception

# ------------------------------------------------------------------------------------------ EmoAcc


def test_video_accuracy_by_mean_logits_and_by_vote_differ_as_defined():
    # frames vote 2:1 for class 1, but class 0's one confident frame wins the mean
    logits = np.array([[10.0, 0, 0], [0, 1, 0], [0, 1, 0]])
    assert video_prediction(logits) == (0, 1)
    result = emotion_accuracy([logits, np.array([[0.0, 0, 5]])], [1, 2])
    assert result["emo_acc"] == 0.5 and result["emo_acc_vote"] == 1.0
    assert result["per_class"]["angry"] == {"n": 1, "mean_logits": 0.0, "vote": 1.0}


def _emotion_store(root: Path, seed: int, clips_per_emotion: int, emotions=(0, 1, 5, 6)) -> ClipStore:
    """Clips whose frames show an emotion-specific bright bar (position) on noise."""
    rng = np.random.default_rng(seed)
    store = ClipStore.create(root)
    for e in emotions:
        for c in range(clips_per_emotion):
            frames = rng.integers(0, 120, (10, 24, 24, 3), dtype=np.uint8)
            row = 3 + 5 * (emotions.index(e))
            frames[:, row:row + 3, 4:20] = 230
            cid = f"{EMOTIONS[e]}_{c}"
            store.write_clip(cid, {"frames": frames, "landmarks": np.zeros((10, 68, 2)), "expression": np.zeros((10, 4)),
                                   "intensity": np.ones(10)}, {"identity": "id0", "emotion": EMOTIONS[e], "level": 3, "fps": 25})
            store.append_manifest({"id": cid, "status": "ok", "emotion": EMOTIONS[e]})
    return store


TINY_CLASSIFIER = ["model.resolution=24", "model.channels=[8,16]", "model.dropout=0.0", "train.batch_size=32",
                   "train.learning_rate=3e-3", "train.weight_decay=0.0"]


def test_emotion_classifier_stage_learns_the_emotions(tmp_path):
    _emotion_store(tmp_path / "train", seed=0, clips_per_emotion=4)
    test_store = _emotion_store(tmp_path / "test", seed=1, clips_per_emotion=3)
    out = tmp_path / "run"
    assert main(["train", "emotion-classifier", "--store", str(tmp_path / "train"), "--output-dir", str(out),
                 "--max-steps", "60", "--set", *TINY_CLASSIFIER, "data.val_fraction=0.25"]) == 0
    model = EmotionClassifier.from_pretrained(out / "model")
    ids = test_store.clip_ids()
    logits = [frame_logits(model, test_store.clip(i).frames) for i in ids]
    result = emotion_accuracy(logits, [EMOTIONS.index(test_store.clip(i).emotion) for i in ids])
    print(f"EmoAcc on held-out clips after 60 steps: {result['emo_acc']:.3f} (chance 0.25)")
    assert result["emo_acc"] >= 0.9
    assert set(json.loads((out / "validation.json").read_text())) == {"emo_acc", "emo_acc_vote", "per_class"}


def test_emotion_classifier_training_resumes_exactly(tmp_path):
    from safetensors.torch import load_file

    _emotion_store(tmp_path / "store", seed=0, clips_per_emotion=2)  # 40 frames + mirrors: 2 batches/epoch
    args = ["train", "emotion-classifier", "--store", str(tmp_path / "store"), "--set", *TINY_CLASSIFIER,
            "model.dropout=0.3", "train.checkpoint_every=5", "train.keep_checkpoints=2", "--output-dir"]
    assert main([*args, str(tmp_path / "straight"), "--max-steps", "12"]) == 0
    assert main([*args, str(tmp_path / "resumed"), "--max-steps", "5"]) == 0  # stops mid-epoch
    assert main([*args, str(tmp_path / "resumed"), "--max-steps", "12", "--resume", "latest"]) == 0  # from step 5
    assert sorted(p.name for p in (tmp_path / "resumed" / "checkpoints").iterdir()) == ["checkpoint-10", "checkpoint-12"]
    straight = load_file(tmp_path / "straight" / "model" / "diffusion_pytorch_model.safetensors")
    resumed = load_file(tmp_path / "resumed" / "model" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)


def test_emotion_classifier_stage_rejects_a_store_without_labels(tmp_path, capsys):
    store = ClipStore.create(tmp_path / "s")
    store.write_clip("a", {"frames": np.zeros((2, 8, 8, 3), np.uint8), "landmarks": np.zeros((2, 68, 2)),
                           "expression": np.zeros((2, 2)), "intensity": np.zeros(2)}, {"fps": 25})
    store.append_manifest({"id": "a", "status": "ok"})
    assert main(["train", "emotion-classifier", "--store", str(tmp_path / "s"), "--output-dir", str(tmp_path / "o")]) == 1
    assert "no clips with an emotion label" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------------------ harness


def _read_frames(path: Path, n: int, size: int) -> np.ndarray:
    """First n frames at 25 fps, resized to size²."""
    return np.stack([cv2.resize(f, (size, size), interpolation=cv2.INTER_AREA)
                     for f, _ in zip(media.read_video(path, 25), range(n))])


DEGRADATIONS = {
    "blur_mild": lambda f: np.stack([cv2.GaussianBlur(x, (0, 0), 1.0) for x in f]),
    "blur_strong": lambda f: np.stack([cv2.GaussianBlur(x, (0, 0), 2.5) for x in f]),
    "shift_2px": lambda f: np.stack([cv2.warpAffine(x, np.float32([[1, 0, 2], [0, 1, 0]]), x.shape[1::-1],
                                                    borderMode=cv2.BORDER_REPLICATE) for x in f]),
    "shift_6px": lambda f: np.stack([cv2.warpAffine(x, np.float32([[1, 0, 6], [0, 1, 0]]), x.shape[1::-1],
                                                    borderMode=cv2.BORDER_REPLICATE) for x in f]),
    "frame_drop": lambda f: f[[i - (i % 3 == 2) for i in range(len(f))]],  # every 3rd frame repeats the previous
}


def test_harness_on_fixture_clips_ranks_degraded_copies(fixtures_dir, tmp_path):
    torch.manual_seed(0)
    _alex_files(tmp_path)
    torch.jit.script(_TinyInception()).save(str(tmp_path / "inception.pt"))
    torch.jit.script(_TinyI3D()).save(str(tmp_path / "i3d.pt"))
    weights = Weights(lpips=LPIPS.from_files("alex", tmp_path / "alexnet.pth", tmp_path / "alex.pth"),
                      inception=frechet.load_feature_network(tmp_path / "inception.pt"),
                      i3d=frechet.load_feature_network(tmp_path / "i3d.pt"),
                      emotion_classifier=EmotionClassifier(resolution=32, channels=(8, 16)))  # untrained: plumbing
    reference = {name: Video(frames=_read_frames(fixtures_dir / f"mead_{name}_crop.mp4", 32, 128), fps=25.0, emotion=name)
                 for name in ("happy", "sad", "surprised")}
    runs = {run: {n: Video(frames=degrade(v.frames), fps=25.0, emotion=v.emotion) for n, v in reference.items()}
            for run, degrade in DEGRADATIONS.items()}
    report = evaluate_runs(reference, runs, weights, {"crop": "128×128 (fixture crops, PyAV)"})
    table = report_markdown(report)
    print("\n" + table)
    m = report["metrics"]
    assert m["reference"]["psnr"] == math.inf and m["reference"]["ssim"] == pytest.approx(1.0)
    assert m["reference"]["lpips"] == 0 and abs(m["reference"]["fid"]) < 1e-6 and abs(m["reference"]["fvd"]) < 1e-6
    for a, b in (("blur_mild", "blur_strong"), ("shift_2px", "shift_6px")):
        assert m[a]["psnr"] > m[b]["psnr"] and m[a]["ssim"] > m[b]["ssim"] and m[a]["lpips"] < m[b]["lpips"]
        assert m[a]["fid"] < m[b]["fid"]
    assert m["reference"]["cpbd"] > m["blur_mild"]["cpbd"] > m["blur_strong"]["cpbd"]
    assert m["shift_2px"]["cpbd"] == pytest.approx(m["reference"]["cpbd"], abs=0.05)
    assert m["frame_drop"]["fvd"] > 0 and math.isfinite(m["frame_drop"]["psnr"])
    assert {"lse_c", "flie", "m_lmd"} <= set(report["skipped"]) and 0 <= m["blur_mild"]["emo_acc"] <= 1
    files = write_report(report, tmp_path / "report")
    assert {f.name for f in files} >= {"metrics.md", "metrics.csv", "metrics.json", "metrics.png", "emotion_accuracy.png"}
    assert json.loads((tmp_path / "report" / "metrics.json").read_text())["metrics"]["blur_mild"]["psnr"] == m["blur_mild"]["psnr"]


def _sweep(series: str, f, rng: np.random.Generator, n_frames: int = 30) -> dict[str, Video]:
    """Happy videos of one series at constant k ∈ {0, .25, …, 1} and one per-frame schedule; the generator
    renders expression neutral + f(k)·direction + mouth motion."""
    neutral, direction, mouth_direction = rng.normal(size=(3, 8))
    mouth_direction -= (mouth_direction @ direction) / (direction @ direction) * direction  # speech ⟂ emotion
    mouth = np.outer(np.sin(np.arange(n_frames) / 2), mouth_direction) * 0.2
    frames = np.zeros((n_frames, 16, 16, 3), np.uint8)
    videos = {}
    for k in (0.0, 0.25, 0.5, 0.75, 1.0):
        videos[f"{series}_k{k}"] = Video(frames=frames, fps=25.0, series=series, constant_intensity=k, emotion="happy",
                                         intensity=np.full(n_frames, k), expression=neutral + f(k) * direction + mouth)
    schedule = np.linspace(0, 1, n_frames)
    videos[f"{series}_ramp"] = Video(frames=frames, fps=25.0, series=series, intensity=schedule, emotion="happy",
                                     expression=neutral + f(schedule)[:, None] * direction + mouth)
    return videos


def _run(f) -> dict[str, Video]:
    rng = np.random.default_rng(0)
    return {**_sweep("a", f, rng), **_sweep("b", f, rng)}


def test_harness_intensity_metrics_prefer_the_linear_generator(tmp_path):
    linear = _run(lambda k: k)
    runs = {"linear": linear, "cubic": _run(lambda k: np.asarray(k) ** 3), "half": _run(lambda k: 0.5 * np.asarray(k)),
            "ramps_only": {n: v for n, v in linear.items() if n.endswith("ramp")}}  # no constant-k video to calibrate on
    report = evaluate_runs(linear, runs, Weights())
    m = report["metrics"]
    print({run: f"FLIE {row.get('flie', math.nan):.3g}, Intensity-L2 {row['intensity_l2']:.3g}" for run, row in m.items()})
    assert m["linear"]["flie"] == pytest.approx(0.0, abs=1e-9) and m["cubic"]["flie"] > 1
    assert m["linear"]["intensity_l2"] < 1e-3 and m["cubic"]["intensity_l2"] > 0.01
    # the measure is fitted once on the reference: half the asked intensity reads back as k/2, whose error
    # is (k/2)² (FLIE cannot see a gain error: the half run is perfectly linear)
    targets = np.concatenate([v.intensity for v in linear.values()])
    assert m["half"]["intensity_l2"] == pytest.approx(np.mean((targets / 2) ** 2), rel=0.05)
    assert m["half"]["flie"] == pytest.approx(0.0, abs=1e-9)
    assert m["ramps_only"]["intensity_l2"] < 1e-3
    assert "intensity measure" in report["settings"] and "happy" in report["settings"]["intensity measure"]
    assert m["linear"]["diversity"] > 0
    assert "lie" in report["skipped"] and "fid" in report["skipped"]
    names = {p.name for p in write_report(report, tmp_path)}
    assert {"intensity_curves.png", "flie_curves.png"} <= names


# ------------------------------------------------------------------------------------------ CLI errors


@pytest.mark.parametrize("argv, message", [
    (["evaluate", "--out", "x"], "needs --reference"),
    (["evaluate", "--reference", "{tmp}", "--run", "ours", "--out", "x"], "NAME=DIR"),
    (["evaluate", "--reference", "{tmp}", "--run", "a={tmp}", "--lpips-backbone", "b.pth", "--out", "x"],
     "both --lpips-backbone and --lpips-linear"),
    (["evaluate", "--reference", "{tmp}", "--run", "a={tmp}", "--syncnet", "{tmp}", "--out", "x"], "config.json"),
    (["evaluate", "--reference", "{tmp}/missing", "--run", "a={tmp}", "--out", "x"], "does not exist"),
    (["evaluate", "--reference", "{tmp}", "--run", "a={tmp}", "--out", "x"], "No videos"),
    (["evaluate", "protocol", "--out", "x"], "needs --source"),
    (["evaluate", "--reference", "{tmp}", "--run", "a={tmp}", "--expression", "deca", "--out", "x"], "--deca-model"),
])
def test_evaluate_cli_errors_are_one_sentence(tmp_path, capsys, argv, message):
    assert main([a.replace("{tmp}", str(tmp_path)) for a in argv]) == 1
    err = capsys.readouterr().err
    assert err.startswith("emodiff: error: ") and message in err and "Traceback" not in err


# ------------------------------------------------------------------------------------------ CLI end to end


def _write_video(path: Path, frames: np.ndarray, fps: int = 25) -> None:
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.options = {"crf": "12"}
        for f in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        container.mux(stream.encode())


def _write_talking_video(folder: Path, name: str, audio: np.ndarray, expression: np.ndarray, sidecar: dict | None) -> None:
    """A 32×32 video with `audio` muxed, its expression vectors and (optionally) its JSON sidecar."""
    frames = np.full((len(expression), 32, 32, 3), 128, np.uint8)
    frames[:, 8:24, 8:24] = (100 + 100 * np.tanh(expression[:, :1, None, None])).astype(np.uint8)
    with media.VideoWriter(folder / f"{name}.mp4", 25, audio) as writer:
        for frame in frames:
            writer.write(frame)
    np.save(folder / f"{name}.expression.npy", expression.astype(np.float32))
    if sidecar is not None:
        (folder / f"{name}.json").write_text(json.dumps(sidecar))


def test_videos_that_cannot_be_measured_are_reported_and_the_rest_is_written(tmp_path, capsys):
    from emodiff.data.synthetic import SyntheticWorld

    world, rng = SyntheticWorld(size=32), np.random.default_rng(0)
    direction = world.emotion_direction("happy")
    ref, run, out = tmp_path / "ref", tmp_path / "half", tmp_path / "report"
    ref.mkdir(), run.mkdir()
    for name, n_frames, silent in (("talk", 75, False), ("quiet", 75, True), ("short", 4, False)):
        k = world.intensity_curve(3, n_frames, rng)
        audio, mouth = world.speech(n_frames, k, rng)
        audio = np.zeros_like(audio) if silent else audio
        for folder, gain in ((ref, 1.0), (run, 0.5)):
            expression = gain * k[:, None] * direction
            expression[:, 0] = mouth
            sidecar = {"emotion": "happy", "identity": "a", "intensity": k.tolist()} if folder == ref else None
            _write_talking_video(folder, name, audio, expression, sidecar)
    (run / "broken.mp4").write_bytes(rng.integers(0, 256, 3000, dtype=np.uint8).tobytes())
    assert main(["evaluate", "--reference", str(ref), "--run", f"half={run}", "--aligned", "--landmarks", "none",
                 "--expression", "none", "--size", "32", "--out", str(out)]) == 0
    report = json.loads((out / "metrics.json").read_text())
    markdown = (out / "metrics.md").read_text()
    with capsys.disabled():
        print("\n" + markdown)
    not_computed = report["extras"]["half"]["not_computed"]["beat_align"]
    assert set(not_computed) == {"quiet", "short"} and "silent" in not_computed["quiet"] and "lasts" in not_computed["short"]
    assert 0 <= report["metrics"]["half"]["beat_align"] <= 1  # from the one video with speech
    assert "Beat Align, half/quiet: The video's audio is silent" in markdown
    assert "Cannot read" in report["left_out"]["half/broken"] and "half/broken" in markdown
    # the intensity measure is fitted on the reference: the run at half gain has the larger error
    assert report["metrics"]["reference"]["intensity_l2"] < 0.01 < report["metrics"]["half"]["intensity_l2"]


def test_evaluate_cli_end_to_end_and_protocol(fixtures_dir, tmp_path, capsys):
    protocol_src = tmp_path / "mead" / "M003" / "video" / "front" / "sad" / "level_3"
    protocol_src.mkdir(parents=True)
    (protocol_src / "001.mp4").symlink_to(fixtures_dir / "mead_sad_crop.mp4")
    assert main(["evaluate", "protocol", "--source", str(tmp_path / "mead"), "--out", str(tmp_path / "protocol"),
                 "--sweep", "0,0.5,1"]) == 0
    rows = (tmp_path / "protocol" / "protocol.csv").read_text().splitlines()
    assert len(rows) == 1 + 1 + 3 and rows[1].startswith("M003_sad_3_001,inputs/M003_sad_3_001.png")
    assert json.loads((tmp_path / "protocol" / "reference" / "M003_sad_3_001_k0.50.json").read_text()) == {
        "emotion": "sad", "identity": "M003", "intensity": 0.5, "series": "M003_sad_3_001"}
    assert json.loads((tmp_path / "protocol" / "reference" / "M003_sad_3_001.json").read_text())["intensity"] == 1.0
    mead = _read_frames(tmp_path / "protocol" / "reference" / "M003_sad_3_001.mp4", 20, 256)
    hdtf = _read_frames(fixtures_dir / "hdtf_katiehill_000.mp4", 20, 256)
    ref, run = tmp_path / "ref", tmp_path / "blurred"
    ref.mkdir(), run.mkdir()
    for name, frames in (("clip", mead), ("talk", hdtf)):
        _write_video(ref / f"{name}.mp4", frames)
        _write_video(run / f"{name}.mp4", np.stack([cv2.GaussianBlur(f, (0, 0), 2.0) for f in frames]))
    (ref / "clip.json").write_text(json.dumps({"emotion": "sad"}))
    out = tmp_path / "report"
    _alex_files(tmp_path)
    torch.jit.script(_TinyInception()).save(str(tmp_path / "inception.pt"))
    assert main(["evaluate", "--reference", str(ref), "--run", f"blurred={run}", "--run", f"copy={ref}", "--size", "64",
                 "--lpips-backbone", str(tmp_path / "alexnet.pth"), "--lpips-linear", str(tmp_path / "alex.pth"),
                 "--inception", str(tmp_path / "inception.pt"), "--device", "cpu", "--out", str(out)]) == 0
    report = json.loads((out / "metrics.json").read_text())
    ref_row, blurred = report["metrics"]["reference"], report["metrics"]["blurred"]
    with capsys.disabled():
        print("\n" + (out / "metrics.md").read_text())
    assert ref_row["psnr"] == "inf" and ref_row["lpips"] == 0 and ref_row["f_lmd"] == 0
    assert blurred["psnr"] < 40 and blurred["lpips"] > 0 and blurred["fid"] > ref_row["fid"]
    assert 0 < blurred["m_lmd"] < 3  # blur moves detected landmarks a little, in 64² crop pixels
    assert "emo_acc" in report["skipped"] and "fvd" in report["skipped"]
    # landmark expression vectors (prepare's extractor, basis fitted on the reference) for every run; an
    # identical copy of the reference gets exactly the reference's numbers
    assert report["metrics"]["copy"] == ref_row and ref_row["diversity"] > 0 and blurred["diversity"] > 0
    assert "| blurred |" in (out / "metrics.md").read_text()
    np.save(run / "clip.expression.npy", np.zeros((7, 50), np.float32))
    assert main(["evaluate", "--reference", str(ref), "--run", f"blurred={run}", "--aligned", "--landmarks", "none",
                 "--out", str(out)]) == 1
    assert "has 7 rows but its video has 20 frames" in capsys.readouterr().err
    (run / "clip.expression.npy").unlink()
    (run / "clip.json").write_text(json.dumps({"emotion": "joy"}))
    assert main(["evaluate", "--reference", str(ref), "--run", f"blurred={run}", "--aligned", "--landmarks", "none",
                 "--out", str(out)]) == 1
    assert "valid emotions are" in capsys.readouterr().err
    assert json.loads((out / "metrics.json").read_text()) == report  # a failed run leaves the last report intact


def test_evaluate_with_deca_expression_vectors(fixtures_dir, tmp_path):
    from tests.deca_assets import tiny_encoder, write_flame_files

    write_flame_files(tmp_path, np.random.default_rng(0))
    torch.save({"E_flame": tiny_encoder().state_dict()}, tmp_path / "deca_model.tar")
    ref = tmp_path / "ref"
    ref.mkdir()
    _write_video(ref / "a.mp4", _read_frames(fixtures_dir / "mead_happy_crop.mp4", 12, 128))
    out = tmp_path / "report"
    assert main(["evaluate", "--reference", str(ref), "--run", f"copy={ref}", "--aligned", "--size", "64",
                 "--expression", "deca", "--deca-model", str(tmp_path / "deca_model.tar"),
                 "--flame-model", str(tmp_path / "generic_model.pkl"), "--device", "cpu", "--out", str(out)]) == 0
    report = json.loads((out / "metrics.json").read_text())
    # FLAME ψ (tiny random DECA encoder, real file formats) reach the expression metrics of every run
    assert report["metrics"]["copy"]["diversity"] == report["metrics"]["reference"]["diversity"] > 0
    assert report["settings"]["expression vectors"] == "deca"
