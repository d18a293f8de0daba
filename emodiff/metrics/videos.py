"""The videos `emodiff evaluate` scores (emodiff/cli/evaluate.py gives the folder convention and sidecars): finding a
folder's videos, reading them at one fps, face-aligning them with the crop code of `emodiff prepare` (docs/design.md
§4.3), their sidecars, the expression vectors filled in for the ones without (§4.2) and the runs upscaled by a
super-resolution model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from emodiff.data.labels import EMOTIONS, emotion_index
from emodiff.errors import EmodiffError
from emodiff.metrics.super_resolution import recorded, upscale_video

REFERENCE_RUN = "reference"
VIDEO_SUFFIXES = (".mp4", ".mov", ".avi", ".mkv", ".webm")


@dataclass
class Video:
    """One video prepared for evaluation: aligned crops uint8 (T, S, S, 3) and what is known about it."""

    frames: np.ndarray
    fps: float
    audio: np.ndarray | None = None
    emotion: str | None = None
    intensity: np.ndarray | None = None  # target k per frame
    constant_intensity: float | None = None  # k when the sidecar gave one number
    series: str | None = None
    expression: np.ndarray | None = None
    landmarks: np.ndarray | None = None
    mesh: np.ndarray | None = None  # dense face mesh of the detection (source pixels), for `landmarks` vectors
    identity: str | None = None
    landmarks_error: str | None = None  # why a pre-aligned video has no landmarks (no face found in enough frames)

    @property
    def identity_key(self) -> str | None:
        """Whose neutral face the expression vectors are measured from: identity, else series."""
        return self.identity or self.series


def read_sidecar(video_path: Path, fallback_dir: Path | None) -> dict:
    """Labels and arrays of `<name>.*` next to the video, else next to `fallback_dir/<name>.mp4`."""
    found: dict = {}
    for folder in ([fallback_dir] if fallback_dir else []) + [video_path.parent]:
        stem = folder / video_path.stem
        if stem.with_suffix(".json").is_file():
            try:
                found.update(json.loads(stem.with_suffix(".json").read_text()))
            except json.JSONDecodeError as err:
                raise EmodiffError(f"{stem.with_suffix('.json')} is not valid JSON: {err}.") from err
        for key in ("expression", "landmarks"):
            path = Path(f"{stem}.{key}.npy")
            if path.is_file():
                found[key] = np.load(path, allow_pickle=False)
    return found


def make_video(frames: np.ndarray, fps: float, audio: np.ndarray | None, sidecar: dict) -> Video:
    """A Video with its sidecar checked (emotion name, intensity in [0, 1], one array row per frame)."""
    for key in ("expression", "landmarks"):
        if key in sidecar and len(sidecar[key]) != len(frames):
            raise EmodiffError(f"The {key} sidecar has {len(sidecar[key])} rows but its video has {len(frames)} frames.")
    emotion = sidecar.get("emotion")
    if emotion is not None:
        emotion = EMOTIONS[emotion_index(emotion)]
    intensity, constant = sidecar.get("intensity"), None
    if intensity is not None:
        k = np.asarray(intensity, dtype=np.float64).reshape(-1)
        if k.size == 1:
            constant = float(k[0])
            k = np.full(len(frames), constant)
        if np.any((k < 0) | (k > 1)):
            raise EmodiffError(f"Intensity values must lie in [0, 1]; got {k.min():.3g}..{k.max():.3g}.")
        intensity = k[: len(frames)]
    return Video(frames=frames, fps=fps, audio=audio, emotion=emotion, intensity=intensity,
                 constant_intensity=constant, series=sidecar.get("series"), identity=sidecar.get("identity"),
                 expression=sidecar.get("expression"), landmarks=sidecar.get("landmarks"), mesh=sidecar.get("mesh"))


class UnusableVideo(EmodiffError):
    """A video whose frames cannot be read or aligned (no frames, no face in too many frames): evaluate
    leaves it out and the report says why."""


def load_video(path: Path, fps: float, size: int, aligned: bool, landmarks: str | None = "mediapipe",
               fallback_dir: Path | None = None) -> Video:
    """Read at `fps` and crop to size×size with prepare's rule (per-frame iBUG-68 landmarks, nose-tip
    centred boxes smoothed in time); `aligned`: the video is a face crop already and is only resized.
    Landmarks (crop pixels) come from the same detection; `landmarks=None` skips detection (aligned only).
    A sidecar's arrays win over detected ones. Raises UnusableVideo when the frames cannot be read or aligned."""
    from emodiff.data.media import load_audio

    if landmarks is None and not aligned:
        raise EmodiffError("Aligning videos needs a landmark backend; use --aligned for face crops.")
    try:
        frames, points, mesh, landmarks_error = _aligned_frames(path, fps, size, aligned, landmarks)
    except EmodiffError as err:
        raise UnusableVideo(str(err)) from err
    try:
        audio = load_audio(path)
    except EmodiffError:
        audio = None  # a video without a sound track: sync and beat metrics skip it
    sidecar = read_sidecar(path, fallback_dir)
    if points is not None:
        sidecar.setdefault("landmarks", points.astype(np.float32))
        sidecar["mesh"] = mesh
    video = make_video(frames, fps, audio, sidecar)
    video.landmarks_error = landmarks_error
    return video


def _aligned_frames(path: Path, fps: float, size: int, aligned: bool, landmarks: str | None
                    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, str | None]:
    """Crops (T, size, size, 3), their iBUG-68 landmarks (crop pixels), the detection's mesh and, for a pre-aligned
    video whose face is not found, why it has no landmarks (its frames still count; see load_video)."""
    from emodiff.data import align
    from emodiff.data.media import read_video
    from emodiff.data.prepare import PrepareSettings, crop_frames, detect_faces

    points = mesh = error = None
    if landmarks is not None:
        try:
            points, mesh, _ = detect_faces(path, PrepareSettings(size=size, fps=fps, landmarks=landmarks))
        except EmodiffError as err:
            if not aligned:
                raise
            error = str(err)
    if not aligned:
        boxes = align.smooth_boxes(points)
        frames = crop_frames(path, boxes, PrepareSettings(size=size, fps=fps))
        return frames, np.stack([align.to_crop_coords(p, b, size) for p, b in zip(points, boxes)]), mesh, None
    frames, source_hw = [], (size, size)
    for frame in read_video(path, fps):
        source_hw = frame.shape[:2]
        frames.append(cv2.resize(frame, (size, size), interpolation=cv2.INTER_AREA))
    if not frames:
        raise EmodiffError(f"{path} has no frames.")
    if points is not None:  # source pixels (x, y) → resized crop pixels
        points = points * (size / np.array([source_hw[1], source_hw[0]], dtype=np.float64))
    return np.stack(frames), points, mesh, error


def video_paths(folder: Path) -> dict[str, Path]:
    """`<name>` → video path for the videos directly inside `folder`."""
    if not folder.is_dir():
        raise EmodiffError(f"Video folder {folder} does not exist.")
    paths = {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in VIDEO_SUFFIXES}
    if not paths:
        raise EmodiffError(f"No videos ({', '.join(VIDEO_SUFFIXES)}) in {folder}.")
    return paths


# ---------------------------------------------------------------------------------------------- expression vectors

def landmark_expressions(reference: dict[str, Video], runs: dict[str, dict[str, Video]]) -> list[str]:
    """Fill missing expression vectors with prepare's `landmarks` extractor, its basis, canonical shape and
    per-identity neutral meshes fitted on the reference videos only, so every run is measured in one space.
    A video is matched to a reference identity by `identity_key` (identity, else series, else its name).
    Returns the names of the videos left without vectors."""
    import tempfile

    from emodiff.data.expression import LandmarkExpression, normalise_mesh
    from emodiff.data.store import ClipStore
    from emodiff.files import save_npy_atomic

    extractor = LandmarkExpression()
    missing = []
    with tempfile.TemporaryDirectory(prefix="emodiff-eval-") as tmp:
        store = ClipStore.create(tmp)
        clips: dict[tuple[str, str], str] = {}
        for run, videos in ((REFERENCE_RUN, reference), *runs.items()):
            for name, video in videos.items():
                if video.expression is not None:
                    continue
                if video.mesh is None:
                    missing.append(f"{run}/{name}")
                    continue
                clip_id = f"{len(clips):06d}"
                clip = store.write_clip(clip_id, {"landmarks": video.landmarks},
                                        {"identity": video.identity_key or name, "emotion": video.emotion})
                save_npy_atomic(clip.path / "mesh.npy", normalise_mesh(video.mesh.astype(np.float64)).astype(np.float16))
                clips[(run, name)] = clip_id
        fit_ids = [cid for (run, _), cid in clips.items() if run == REFERENCE_RUN]
        if not fit_ids:
            return missing + [f"{run}/{name}" for run, name in clips]
        extractor.fit(store, fit_ids)
        for (run, name), clip_id in clips.items():
            video = (reference if run == REFERENCE_RUN else runs[run])[name]
            if store.clip(clip_id).identity in extractor.state["neutral"]:
                video.expression = extractor.transform(store.clip(clip_id))
            else:
                missing.append(f"{run}/{name}")
    return missing


def deca_expressions(reference: dict[str, Video], runs: dict[str, dict[str, Video]], deca_model: str,
                     flame_model: str, device: str) -> list[str]:
    """Fill missing expression vectors with FLAME ψ (50) from our DECA encoder (the paper's FLIE setting)."""
    from emodiff.data.expression import make_expression_extractor

    extractor = make_expression_extractor("deca", deca_model=deca_model, flame_model=flame_model, device=device)
    missing = []
    for run, videos in ((REFERENCE_RUN, reference), *runs.items()):
        for name, video in videos.items():
            if video.expression is None and video.landmarks is not None:
                video.expression = extractor.extract(video.frames, video.landmarks)["expression"]
            elif video.expression is None:
                missing.append(f"{run}/{name}")
    return missing


def run_super_resolution(paths: dict[str, Path]) -> str:
    """The super-resolution a run's videos record (`emodiff.metrics.super_resolution.describe`), "not recorded"
    for videos that do not say (or cannot be read: they are left out with their reason later)."""
    from emodiff.data.media import probe

    def of(path: Path) -> str:
        try:
            return recorded(probe(path).comment) or "not recorded"
        except EmodiffError:
            return "not recorded"

    return ", ".join(sorted({of(path) for path in paths.values()}))


def super_resolved_runs(run_paths: dict[str, dict[str, Path]], model: torch.nn.Module,
                        out_dir: Path) -> dict[str, dict[str, Path]]:
    """Every run's videos upscaled by `model` into out_dir/<run>/, as the runs `<run>+sr` (a video that cannot be
    read is left out of its `+sr` run; the run itself reports why)."""
    upscaled: dict[str, dict[str, Path]] = {}
    for run, paths in run_paths.items():
        upscaled[f"{run}+sr"] = {}
        for name, path in tqdm(paths.items(), desc=f"super-resolve {run}"):
            try:
                upscaled[f"{run}+sr"][name] = upscale_video(path, out_dir / run / f"{name}.mp4", model)
            except EmodiffError:
                continue
    return upscaled



def load_runs(reference_paths: dict[str, Path], run_paths: dict[str, dict[str, Path]], reference_dir: Path, fps: float,
              size: int, aligned: bool, landmarks: str | None
              ) -> tuple[dict[str, Video], dict[str, dict[str, Video]], dict[str, str]]:
    """The reference's and every run's videos read by `load_video` (a run's sidecars fall back to the reference
    folder's), and the videos left out: "run/name" → why it could not be read or aligned."""
    left_out: dict[str, str] = {}
    with tqdm(total=len(reference_paths) + sum(len(p) for p in run_paths.values()), desc="read and align videos") as bar:

        def load_all(run: str, paths: dict[str, Path], fallback: Path | None) -> dict[str, Video]:
            videos = {}
            for name, path in paths.items():
                try:
                    videos[name] = load_video(path, fps, size, aligned, landmarks, fallback)
                except UnusableVideo as err:
                    left_out[f"{run}/{name}"] = str(err)
                bar.update(1)
            return videos

        reference = load_all(REFERENCE_RUN, reference_paths, None)
        runs = {name: load_all(name, paths, reference_dir) for name, paths in run_paths.items()}
    return reference, runs, left_out
