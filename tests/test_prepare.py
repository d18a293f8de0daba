"""Faces, alignment, expression vectors, pseudo intensity and `emodiff prepare` / `emodiff inspect`."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from emodiff.cli import main as cli_main
from emodiff.data import align
from emodiff.data.expression import RIGID_POINTS, LandmarkExpression, normalise_mesh, raw_intensity, similarity_transform
from emodiff.data.landmarks import MEDIAPIPE_TO_IBUG68, NOSE_TIP, make_detector
from emodiff.data.media import probe, read_video
from emodiff.data.prepare import (
    PrepareSettings, clip_id_for, finalise, find_sources, interpolate_missing, parse_shard, prepare)
from emodiff.data.store import ClipStore
from emodiff.errors import EmodiffError

REPO = Path(__file__).resolve().parents[1]
SIZE = 64
MEAD_NAMES = {"mead_happy_crop.mp4": "M030_happy_3_001.mp4", "mead_sad_crop.mp4": "M030_sad_3_001.mp4",
              "mead_surprised_crop.mp4": "M030_surprised_3_001.mp4", "hdtf_katiehill_000.mp4": "hdtf_katiehill_000.mp4"}


def read_rgb(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def write_video(path: Path, frames: list[np.ndarray], fps: int, audio: np.ndarray | None = None,
                rate: int = 48_000) -> None:
    """An H.264 mp4 with optional stereo AAC audio (channels, samples) at `rate`."""
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=fps)
        video.height, video.width = frames[0].shape[:2]
        video.pix_fmt = "yuv420p"
        sound = container.add_stream("aac", rate=rate, layout="stereo") if audio is not None else None
        for image in frames:
            container.mux(video.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(video.encode())
        if sound is not None:
            for start in range(0, audio.shape[1], 1024):
                chunk = av.AudioFrame.from_ndarray(np.ascontiguousarray(audio[:, start:start + 1024]),
                                                   format="fltp", layout="stereo")
                chunk.sample_rate, chunk.pts, chunk.time_base = rate, start, Fraction(1, rate)
                container.mux(sound.encode(chunk))
            container.mux(sound.encode())


def store_arrays(store: ClipStore) -> dict[str, dict[str, np.ndarray]]:
    names = ("frames", "landmarks", "audio_feats", "expression", "intensity")
    return {cid: {n: np.asarray(getattr(store.clip(cid), n)) for n in names
                  if getattr(store.clip(cid), n) is not None} for cid in store.clip_ids()}


# -- landmarks and alignment -------------------------------------------------------------------
def test_ibug68_map_follows_the_face_anatomy(fixtures_dir):
    assert len(MEDIAPIPE_TO_IBUG68) == 68 and all(0 <= i < 468 for ids in MEDIAPIPE_TO_IBUG68 for i in ids)
    detector = make_detector("mediapipe", video=False)
    (face,) = detector.detect(read_rgb(fixtures_dir / "face_happy.png"))
    p = face.points68
    assert face.mesh.shape == (478, 3)
    assert p[0, 0] < p[8, 0] < p[16, 0] and p[8, 1] == p[:17, 1].max()  # jaw: left to right, chin lowest
    assert p[36:42, 0].max() < p[27, 0] < p[42:48, 0].min()  # the eyes on either side of the nose bridge
    assert p[17:27, 1].max() < p[36:48, 1].min()  # brows above the eyes
    assert p[36:48, 1].max() < p[NOSE_TIP, 1] < p[48:68, 1].min()  # nose tip between the eyes and the mouth
    assert p[48, 0] < p[51, 0] < p[54, 0] and p[51, 1] < p[62, 1] < p[57, 1] and p[51, 1] < p[66, 1] < p[57, 1]  # lips in order


def test_align_image_centres_the_nose_and_rejects_zero_or_two_faces(fixtures_dir):
    happy, sad = read_rgb(fixtures_dir / "face_happy.png"), read_rgb(fixtures_dir / "face_sad.png")
    crop = align.align_image(happy, SIZE)
    assert crop.shape == (SIZE, SIZE, 3) and crop.dtype == np.uint8
    (face,) = make_detector("mediapipe", video=False).detect(cv2.resize(crop, (256, 256)))
    assert np.abs(face.points68[NOSE_TIP] / 256 - 0.5).max() < 0.05
    gradient = np.tile(np.linspace(0, 255, 256, dtype=np.uint8)[None, :, None], (256, 1, 3))
    with pytest.raises(EmodiffError, match="exactly one face, but none"):
        align.align_image(gradient, SIZE)
    with pytest.raises(EmodiffError, match="exactly one face, but 2"):
        align.align_image(np.concatenate([happy, sad], axis=1), SIZE)


def test_crop_boxes_are_smoothed_and_landmarks_map_into_the_crop():
    rng = np.random.default_rng(0)
    face = rng.uniform(-40, 40, (68, 2))
    track = np.linspace([200, 150], [260, 170], 50)[:, None] + face + rng.normal(0, 3, (50, 68, 2))
    boxes = align.smooth_boxes(track)
    raw = align.face_box(track)
    assert np.abs(np.diff(boxes[:, :2], axis=0)).std() < 0.5 * np.abs(np.diff(raw[:, :2], axis=0)).std()
    image = np.zeros((400, 400, 3), np.uint8)
    image[150, 200] = 255
    box = np.array([205.0, 155.0, 100.0])
    crop = align.crop(image, box, 100)
    assert np.argwhere(crop[..., 0] == 255).tolist() == [[45, 45]]
    assert np.allclose(align.to_crop_coords(np.array([200.0, 150.0]), box, 100), [45, 45])
    edge = align.crop(image, np.array([10.0, 10.0, 60.0]), 32)  # partly outside: padded, right size
    assert edge.shape == (32, 32, 3)


def test_interpolate_missing_fills_gaps_linearly():
    values = np.arange(6, dtype=np.float32)[:, None] * np.ones((6, 2), np.float32)
    found = np.array([False, True, False, False, True, False])
    filled = interpolate_missing(np.where(found[:, None], values, 0), found)
    assert np.allclose(filled[:, 0], [1, 1, 2, 3, 4, 4])


# -- expression vectors and intensity -----------------------------------------------------------
def random_rotations(rng: np.random.Generator, n: int, degrees: float) -> np.ndarray:
    angles = np.radians(rng.uniform(-degrees, degrees, (n, 3)))
    return np.stack([cv2.Rodrigues(a)[0] for a in angles])


def test_similarity_transform_recovers_pose():
    rng = np.random.default_rng(1)
    target = rng.normal(size=(20, 3))
    rotation = random_rotations(rng, 4, 40)
    source = np.einsum("tij,kj->tki", rotation, target) * np.array([2, 0.5, 1, 3])[:, None, None] + rng.normal(size=(4, 1, 3))
    scale, rot, shift = similarity_transform(source, target)
    aligned = scale[:, None, None] * np.einsum("tij,tkj->tki", rot, source) + shift[:, None]
    assert np.allclose(aligned, target[None], atol=1e-9)


def synthetic_mesh_store(root: Path, rng: np.random.Generator, n_frames: int = 40) -> tuple[ClipStore, np.ndarray, dict[str, np.ndarray]]:
    """Meshes = neutral face + k·direction (one direction per emotion) under random head poses."""
    neutral = rng.normal(size=(478, 3)) * np.array([60, 80, 30])
    directions = {e: rng.normal(size=(478, 3)) * 2 for e in ("happy", "sad")}
    for direction in directions.values():
        direction[list(RIGID_POINTS[478])] = 0  # expressions leave the rigid points in place
    store = ClipStore.create(root)
    ks = {}
    for name, emotion, k in [("n", "neutral", None), ("h", "happy", None), ("s", "sad", None)]:
        k = np.zeros(n_frames) if emotion == "neutral" else np.linspace(0, 1, n_frames)
        shape = neutral[None] + (0 if emotion == "neutral" else k[:, None, None] * directions[emotion])
        shape = shape + rng.normal(0, 0.05, shape.shape)
        mesh = np.einsum("tij,tnj->tni", random_rotations(rng, n_frames, 25), shape) * rng.uniform(0.8, 1.2, (n_frames, 1, 1))
        clip = store.write_clip(f"W001_{emotion}_3_{name}", {"frames": np.zeros((n_frames, 8, 8, 3), np.uint8)},
                                {"identity": "W001", "emotion": emotion, "level": 3, "fps": 25})
        np.save(clip.path / "mesh.npy", LandmarkExpression().extract(None, None, mesh + 500)["mesh"])
        store.append_manifest({"id": clip.clip_id, "status": "extracted", "identity": "W001", "emotion": emotion})
        ks[clip.clip_id] = k
    return store, neutral, ks


def test_landmark_expressions_are_linear_in_k_and_pose_invariant(tmp_path):
    store, _, ks = synthetic_mesh_store(tmp_path / "store", np.random.default_rng(2))
    extractor = LandmarkExpression()
    extractor.fit(store, store.clip_ids("extracted"))
    happy, sad, neutral = (extractor.transform(store.clip(f"W001_{e}_3_{n}")) for e, n in
                           [("happy", "h"), ("sad", "s"), ("neutral", "n")])
    assert happy.shape == (40, 50)
    k = ks["W001_happy_3_h"]
    lead = happy[:, :2]  # two true directions -> the two leading components; the rest is jitter
    slope = np.linalg.lstsq(k[:, None], lead, rcond=None)[0][0]
    assert np.linalg.norm(lead - k[:, None] * slope) < 0.05 * np.linalg.norm(lead)  # e = k·direction, any pose
    assert np.linalg.norm(happy[:, 2:]) < 0.5 * np.linalg.norm(lead)
    assert np.linalg.norm(neutral[:, :2]) < 0.05 * np.linalg.norm(lead)  # the neutral face is the origin
    cos = lead[-1] @ sad[-1, :2] / np.linalg.norm(lead[-1]) / np.linalg.norm(sad[-1, :2])
    assert abs(cos) < 0.3  # emotions stay distinct directions
    reloaded = LandmarkExpression()
    reloaded.load(store)
    assert np.allclose(reloaded.transform(store.clip("W001_happy_3_h")), happy)


def test_landmark_basis_is_zero_padded_when_the_store_is_small(tmp_path):
    store, _, _ = synthetic_mesh_store(tmp_path / "store", np.random.default_rng(5), n_frames=8)
    extractor = LandmarkExpression()
    extractor.fit(store, store.clip_ids("extracted"))
    happy = extractor.transform(store.clip("W001_happy_3_h"))
    assert happy.shape == (8, 50) and np.abs(happy[:, 24:]).max() < 1e-6 < np.abs(happy[:, :2]).max()


def test_pseudo_intensity_grows_with_k_and_is_normalised(tmp_path):
    store, _, ks = synthetic_mesh_store(tmp_path / "store", np.random.default_rng(3))
    finalise(store, LandmarkExpression())
    assert store.clip_ids() == sorted(ks)
    happy = store.clip("W001_happy_3_h")
    assert happy.intensity.min() >= 0 and happy.intensity.max() <= 1
    assert np.corrcoef(happy.intensity, ks["W001_happy_3_h"])[0, 1] > 0.9
    assert store.clip("W001_neutral_3_n").intensity.mean() < 0.2
    assert happy.meta["intensity_reference"] == "neutral clips of the identity"
    assert np.allclose(raw_intensity(np.array([[1.0, -2.0]]), np.array([0.5, 0.0])), [2.5])


def test_normalise_mesh_keeps_float16_precision():
    mesh = np.random.default_rng(4).normal(size=(3, 478, 3)) * 50 + 1500  # 1080p pixel coordinates
    normalised = normalise_mesh(mesh)
    assert np.abs(normalised.astype(np.float16) - normalised).max() < 5e-3


# -- sources ------------------------------------------------------------------------------------
def test_sources_ids_and_shards(tmp_path):
    mead = tmp_path / "MEAD" / "M003" / "video" / "front" / "angry" / "level_3"
    mead.mkdir(parents=True)
    for name in ("001.mp4", "002.MOV", "notes.txt"):
        (mead / name).touch()
    (tmp_path / "odd name (1).webm").touch()
    sources = find_sources([tmp_path / "MEAD", tmp_path / "odd name (1).webm"])
    ids = [s.clip_id for s in sources]
    assert ids[:2] == ["M003_video_front_angry_level_3_001", "M003_video_front_angry_level_3_002"]
    assert ids[2].startswith("odd-name--1-") and ids[2] == clip_id_for("odd name (1).webm")
    assert clip_id_for("M003_angry_3_001.mp4") == "M003_angry_3_001"
    assert parse_shard("1/3") == (1, 3)
    with pytest.raises(EmodiffError, match="i/n"):
        parse_shard("3/3")
    with pytest.raises(EmodiffError, match="does not exist"):
        find_sources([tmp_path / "missing"])


# -- `emodiff prepare` on real media -----------------------------------------------------------
def mead_sources(fixtures_dir: Path, folder: Path) -> Path:
    """The fixture clips copied under MEAD-style names (labels come from the names)."""
    folder.mkdir(parents=True, exist_ok=True)
    for original, name in MEAD_NAMES.items():
        shutil.copy(fixtures_dir / original, folder / name)
    return folder


@pytest.fixture(scope="module")
def prepared(fixtures_dir, tmp_path_factory) -> tuple[Path, ClipStore]:
    sources = mead_sources(fixtures_dir, tmp_path_factory.mktemp("src"))
    out = tmp_path_factory.mktemp("store") / "store"
    assert cli_main(["prepare", str(sources), "--out", str(out), "--size", str(SIZE), "--workers", "1"]) == 0
    return sources, ClipStore.open(out)


def test_prepare_gives_aligned_full_length_labelled_clips(prepared):
    sources, store = prepared
    assert store.clip_ids() == sorted(name[:-4] for name in MEAD_NAMES.values())
    for clip_id in store.clip_ids():
        clip = store.clip(clip_id)
        info = probe(sources / f"{clip_id}.mp4")
        n_frames = clip.n_frames
        assert abs(n_frames - info.duration * 25) <= 1
        assert clip.frames.shape == (n_frames, SIZE, SIZE, 3)
        assert clip.landmarks.shape == (n_frames, 68, 2) and clip.expression.shape == (n_frames, 50)
        assert clip.intensity.shape == (n_frames,) and 0 <= clip.intensity.min() <= clip.intensity.max() <= 1
        nose_offset = np.abs(clip.landmarks[:, NOSE_TIP] / SIZE - 0.5).max(axis=1)
        assert (nose_offset < 0.05).mean() >= 0.95
        assert clip.has_audio == info.has_audio == (clip.meta["audio_features"] is not None)
        if clip.has_audio:
            assert clip.audio_feats.shape[0] == n_frames
            audio, rate = clip.audio()
            assert rate == 16_000 and abs(len(audio) - n_frames * 640) <= 1
        assert len(clip.meta["crop_boxes"]) == n_frames and clip.meta["landmarks_backend"]["name"] == "mediapipe"
        assert clip.meta["expression_extractor"] == {"name": "landmarks", "version": "1"}
    happy = store.clip("M030_happy_3_001")
    assert (happy.identity, happy.emotion, happy.level, happy.has_audio) == ("M030", "happy", 3, False)
    assert store.clip("hdtf_katiehill_000").identity is None
    assert store.manifest()["M030_happy_3_001"]["has_audio"] is False


def test_inspect_draws_a_contact_sheet_per_clip(prepared, tmp_path):
    _, store = prepared
    assert cli_main(["inspect", str(store.root), "--out", str(tmp_path)]) == 0
    sheets = sorted(p.stem for p in tmp_path.glob("*.png"))
    assert sheets == store.clip_ids()
    image = cv2.imread(str(tmp_path / f"{sheets[0]}.png"))
    assert image.shape[0] > 200 and image.std() > 10


def test_killed_prepare_resumes_to_the_same_store(prepared, tmp_path, monkeypatch):
    sources, reference = prepared
    out = tmp_path / "store"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "emodiff", "prepare", str(sources), "--out", str(out),
                                "--size", str(SIZE), "--workers", "1"], cwd=REPO, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    manifest = out / "manifest.jsonl"
    deadline = time.monotonic() + 300
    while process.poll() is None and not (manifest.exists() and '"extracted"' in manifest.read_text()):
        if time.monotonic() > deadline:
            process.kill()
            process.wait()
            pytest.fail("emodiff prepare extracted no clip within 300 s")
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed = ClipStore.open(out)
    extracted_before = {cid for cid, e in killed.manifest().items() if e["status"] == "extracted"}
    assert 1 <= len(extracted_before) < 4 and killed.clip_ids() == []  # nothing half-done is accepted

    calls = []
    update_clip = ClipStore.update_clip

    def crash_after_one(self, clip_id, *args, **kwargs):  # an interruption in the middle of finalisation
        if calls:
            raise KeyboardInterrupt
        calls.append(clip_id)
        return update_clip(self, clip_id, *args, **kwargs)

    monkeypatch.setattr(ClipStore, "update_clip", crash_after_one)
    assert cli_main(["prepare", str(sources), "--out", str(out), "--size", str(SIZE), "--workers", "1"]) == 130
    monkeypatch.undo()
    resumed = ClipStore.open(out)
    assert resumed.clip_ids() == calls
    summary = prepare([sources], out, PrepareSettings(size=SIZE))
    assert summary["skipped"] == 4 and summary["finalised"] == 3 and summary["ok"] == 4
    expected, got = store_arrays(reference), store_arrays(resumed)
    assert sorted(got) == sorted(expected)
    for clip_id, arrays in expected.items():
        assert sorted(got[clip_id]) == sorted(arrays)
        for name, array in arrays.items():
            np.testing.assert_allclose(got[clip_id][name], array, atol=1e-5, err_msg=f"{clip_id}/{name}")
    assert not list((out / "clips").glob(".*"))


def test_bad_inputs_fail_per_clip_and_odd_inputs_work(fixtures_dir, tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    (src / "corrupt.mp4").write_bytes(np.random.default_rng(0).bytes(4096))
    gradient = np.tile(np.linspace(0, 255, 96, dtype=np.uint8)[None, :, None], (96, 1, 3))
    write_video(src / "noface.mp4", [np.roll(gradient, i, axis=1) for i in range(25)], fps=25)
    faces = [cv2.resize(f, (1080, 1080)) for f, _ in zip(read_video(fixtures_dir / "hdtf_katiehill_000.mp4", 30), range(36))]
    hd_frames = [cv2.copyMakeBorder(f, 0, 0, 420, 420, cv2.BORDER_CONSTANT) for f in faces]
    t = np.arange(int(1.2 * 48_000)) / 48_000
    stereo = np.stack([np.sin(2 * np.pi * 220 * t), np.sin(2 * np.pi * 330 * t)]).astype(np.float32) * 0.3
    write_video(src / "hd_1080p30_stereo48k.mp4", hd_frames, fps=30, audio=stereo)
    small_sad = cv2.resize(read_rgb(fixtures_dir / "face_sad.png"), (160, 160))
    pair = np.concatenate([read_rgb(fixtures_dir / "face_happy.png"),
                           cv2.copyMakeBorder(small_sad, 48, 48, 48, 48, cv2.BORDER_CONSTANT)], axis=1)
    write_video(src / "two_faces.mp4", [pair] * 12, fps=25)
    out = tmp_path / "store"
    assert cli_main(["prepare", str(src), "--out", str(out), "--size", str(SIZE), "--workers", "2"]) == 1
    printed = capsys.readouterr()
    assert "Traceback" not in printed.out + printed.err and "2 extracted, 2 failed" in printed.out
    store = ClipStore.open(out)
    manifest = store.manifest()
    assert manifest["corrupt"]["status"] == "failed" and "Cannot read" in manifest["corrupt"]["error"]
    assert manifest["noface"]["status"] == "failed" and "No face was found" in manifest["noface"]["error"]
    two = store.clip("two_faces")
    assert "several faces in 12 frames" in manifest["two_faces"]["warnings"][0] and "warning:" in printed.out
    assert np.abs(two.meta["crop_boxes"][0][0] - 128) < 20  # the larger (left) face
    hd = store.clip("hd_1080p30_stereo48k")
    assert store.clip_ids() == ["hd_1080p30_stereo48k", "two_faces"] and abs(hd.n_frames - 30) <= 1
    assert hd.meta["source_video"]["width"] == 1920 and hd.audio_feats.shape[0] == hd.n_frames
    assert (np.abs(hd.landmarks[:, NOSE_TIP] / SIZE - 0.5).max(axis=1) < 0.05).mean() >= 0.95
    assert cli_main(["prepare", str(src), "--out", str(out), "--size", str(SIZE), "--workers", "1"]) == 0
    assert "0 extracted, 0 failed, 4 skipped" in capsys.readouterr().out
    assert cli_main(["prepare", str(src), "--out", str(out), "--size", str(SIZE), "--retry-failed"]) == 1
    assert "0 extracted, 2 failed, 2 skipped" in capsys.readouterr().out
    assert store.clip_ids() == ["hd_1080p30_stereo48k", "two_faces"]
    assert cli_main(["prepare", str(src), "--out", str(out), "--size", "128"]) == 1
    assert "size=64" in capsys.readouterr().err


def test_shards_split_the_sources_and_a_plain_run_finalises(fixtures_dir, tmp_path, monkeypatch):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("face_happy", "face_sad"):
        image = read_rgb(fixtures_dir / f"{name}.png")
        write_video(src / f"W009_{name[5:]}_1_001.mp4", [image] * 10, fps=25)
    out = tmp_path / "store"
    settings = PrepareSettings(size=SIZE)
    first = prepare([src], out, settings, shard="0/2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    second = prepare([src], out, settings)
    assert (first["extracted"], second["extracted"], first["finalised"], first["ok"]) == (1, 1, None, 0)
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    final = prepare([src], out, settings)
    assert (final["skipped"], final["finalised"], final["ok"]) == (2, 2, 2)
    happy = ClipStore.open(out).clip("W009_happy_1_001")
    assert happy.meta["intensity_reference"] == "the clip's 10% least expressive frames"


def test_unusable_settings_fail_before_anything_is_written(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "face_alignment", None)  # as if face-alignment were not installed
    with pytest.raises(EmodiffError, match="'fan' landmark backend needs the face-alignment package"):
        prepare([tmp_path], tmp_path / "store", PrepareSettings(landmarks="fan"))
    with pytest.raises(EmodiffError, match="Unknown expression extractor 'flame'"):
        prepare([tmp_path], tmp_path / "store", PrepareSettings(expression="flame"))
    assert not (tmp_path / "store").exists()
