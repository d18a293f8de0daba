"""Evaluate generated videos against a reference set and compare pipelines with the same metrics (`emodiff evaluate`,
described in emodiff/cli/evaluate.py, which gives the folder convention and sidecars).

`evaluate_folders` reads, resamples and face-aligns every video (the crop code of `emodiff prepare`), computes every
metric whose weights and inputs are present (the others are listed as skipped with the reason; a video that cannot
be read is left out with its reason) and writes metrics.md, metrics.csv, metrics.json and PNG plots.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TypeVar

import cv2
import numpy as np
import torch
from tqdm import tqdm

from emodiff.control.intensity import IntensityMeasure
from emodiff.data.audio_features import check_speech
from emodiff.data.labels import EMOTIONS, emotion_index
from emodiff.files import atomic_path, write_json_atomic, write_text_atomic
from emodiff.errors import EmodiffError
from emodiff.metrics import framewise, frechet, landmarks, linearity, quality
from emodiff.metrics.emotion import emotion_accuracy, frame_logits
from emodiff.metrics.lpips import LPIPS
from emodiff.metrics.sync import FPS as SYNC_FPS
from emodiff.metrics.super_resolution import load_upscaler, recorded, upscale_video
from emodiff.metrics.sync import SyncScores, sync_scores
from emodiff.models.emotion_classifier import EmotionClassifier
from emodiff.models.syncnet import SyncNet

REFERENCE_RUN = "reference"
CPBD_FRAME_STRIDE = 5
VIDEO_SUFFIXES = (".mp4", ".mov", ".avi", ".mkv", ".webm")
T = TypeVar("T")
# (key, column title, better direction) in report order.
METRICS: tuple[tuple[str, str, str], ...] = (
    ("psnr", "PSNR", "↑"), ("ssim", "SSIM", "↑"), ("lpips", "LPIPS", "↓"), ("fid", "FID", "↓"),
    ("fvd", "FVD", "↓"), ("cpbd", "CPBD", "↑"), ("csim", "CSIM", "↑"), ("lse_c", "LSE-C", "↑"),
    ("lse_d", "LSE-D", "↓"), ("m_lmd", "M-LMD", "↓"), ("f_lmd", "F-LMD", "↓"), ("mouth_r", "mouth r", "↑"),
    ("psnr_drift", "PSNR drift", "↑"), ("emo_acc", "EmoAcc", "↑"),
    ("emo_acc_vote", "EmoAcc (vote)", "↑"), ("flie", "FLIE", "↓"), ("lie", "LIE", "↓"),
    ("intensity_l2", "Intensity-L2", "↓"), ("beat_align", "Beat Align", "↑"), ("diversity", "Diversity", "↑"),
)


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


@dataclass
class Weights:
    """Networks found on disk; None = the metrics that need it are skipped."""

    lpips: LPIPS | None = None
    inception: torch.nn.Module | None = None
    i3d: torch.nn.Module | None = None
    syncnet: SyncNet | None = None
    emotion_classifier: EmotionClassifier | None = None
    face_embedder: torch.nn.Module | None = None


@dataclass(frozen=True)
class WeightFiles:
    """The files of the networks (each optional): LPIPS (trunk kind, torchvision backbone and linear layers),
    TorchScript Inception (FID), I3D (FVD) and face embedder (CSIM), SyncNet (syncnet_v2.model or a saved folder)
    and the folder of `emodiff train emotion-classifier`."""

    lpips_trunk: str = "alex"
    lpips_backbone: str | None = None
    lpips_linear: str | None = None
    inception: str | None = None
    i3d: str | None = None
    syncnet: str | None = None
    emotion_classifier: str | None = None
    face_embedder: str | None = None


# ---------------------------------------------------------------------------------------------- loading

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


# ---------------------------------------------------------------------------------------------- metrics

def fit_intensity_measure(reference: dict[str, Video]) -> IntensityMeasure:
    """Intensity-L2's fixed measure, fitted on the reference videos only: their neutral ones (emotion
    "neutral" or target intensity 0 throughout) give each identity's e_n, those with an emotion and a target
    intensity give the emotion's direction."""
    with_vectors = [v for v in reference.values() if v.expression is not None]
    neutral = [(v.identity_key, v.expression) for v in with_vectors
               if v.emotion == "neutral" or (v.intensity is not None and not v.intensity.any())]
    emotional = [(v.emotion, v.identity_key, v.expression, v.intensity) for v in with_vectors
                 if v.emotion not in (None, "neutral") and v.intensity is not None]
    return IntensityMeasure.fit(neutral, emotional)


def describe_intensity_measure(measure: IntensityMeasure) -> str:
    """One line for the report's settings: what Intensity-L2's measure was fitted on."""
    if not measure.emotions:
        return "none (no reference video with an emotion, a target intensity and expression vectors)"
    identities = {identity for _, identity in measure.directions if identity is not None}
    neutral = [identity for identity in measure.neutral if identity is not None]
    return (f"k̂ = ⟨e − e_n, d_y⟩/‖d_y‖², fitted on the reference videos: d_y of {', '.join(measure.emotions)} "
            f"(per identity for {len(identities)}, pooled for the others), e_n of {len(neutral)} identities (the "
            f"others: {'the mean neutral reference' if None in measure.neutral else 'the origin'})")


def _per_video(videos: dict[str, Video], compute: Callable[[Video], T], not_computed: dict[str, str]) -> dict[str, T]:
    """name → compute(video) for every video; a video where it raises EmodiffError is left out and
    `not_computed[name]` says why."""
    results = {}
    for name, video in videos.items():
        try:
            results[name] = compute(video)
        except EmodiffError as err:
            not_computed[name] = str(err)
    return results


def video_speech(video: Video) -> np.ndarray:
    """The video's audio; a missing, silent or too short one is refused with the reason."""
    if video.audio is None:
        raise EmodiffError("The video has no audio track.")
    check_speech(video.audio, "The video's audio")
    return video.audio


def video_beat_align(video: Video) -> float:
    """Beat Align of one video: its audio beats against its expression vectors' motion beats."""
    audio_beats = framewise.audio_onset_beats(video_speech(video), video.fps)
    return framewise.beat_align(audio_beats, framewise.motion_beats(video.expression))


def _intensity_sweeps(videos: dict[str, Video], need_expression: bool) -> list[list[Video]]:
    """Per series, its constant-intensity videos sorted by k (three or more distinct k)."""
    groups: dict[str, list[Video]] = defaultdict(list)
    for v in videos.values():
        if v.series is not None and v.constant_intensity is not None and (v.expression is not None or not need_expression):
            groups[v.series].append(v)
    sweeps = [sorted(g, key=lambda v: v.constant_intensity) for g in groups.values()]
    return [s for s in sweeps if len({v.constant_intensity for v in s}) >= 3]


def _common_frames(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both sequences cut to the shorter length (frame i of one faces frame i of the other)."""
    n = min(len(a), len(b))
    return a[:n], b[:n]


class RunEvaluator:
    """Computes every available metric of one run; records why the others were skipped."""

    def __init__(self, weights: Weights, reference: dict[str, Video]):
        self.weights, self.reference = weights, reference
        self.intensity_measure = fit_intensity_measure(reference)
        self.skipped: dict[str, str] = {}

    def skip(self, metric: str, reason: str) -> None:
        self.skipped.setdefault(metric, reason)

    def evaluate(self, videos: dict[str, Video]) -> tuple[dict[str, float], dict]:
        """The run's metric values and extras; extras["not_computed"][metric][video] says why a metric left
        out one video (its value averages the others)."""
        values: dict[str, float] = {}
        extras: dict = {}
        pairs = [(self.reference[n], videos[n]) for n in sorted(videos) if n in self.reference]
        if pairs:
            values["psnr"] = float(np.mean([quality.psnr(*_common_frames(r.frames, g.frames)) for r, g in pairs]))
            values["ssim"] = float(np.mean([quality.ssim(*_common_frames(r.frames, g.frames)) for r, g in pairs]))
            values["psnr_drift"] = float(np.mean([quality.psnr_drift(*_common_frames(r.frames, g.frames),
                                                                     max(1, round(g.fps))) for r, g in pairs]))
            self._lpips(pairs, values)
            self._lmd(videos, values, extras)
            self._csim(pairs, values)
        else:
            for key in ("psnr", "ssim", "psnr_drift", "lpips", "m_lmd", "f_lmd", "mouth_r", "csim"):
                self.skip(key, "no video name is shared with the reference folder")
        self._frechet(videos, values)
        values["cpbd"] = float(np.mean([quality.cpbd(f) for v in videos.values() for f in v.frames[::CPBD_FRAME_STRIDE]]))
        self._sync(videos, values, extras)
        self._emotion(videos, values, extras)
        self._intensity(videos, values, extras)
        extras["not_computed"] = {metric: reasons for metric, reasons in extras.get("not_computed", {}).items() if reasons}
        if not extras["not_computed"]:
            del extras["not_computed"]
        return values, extras

    def _lpips(self, pairs: list[tuple[Video, Video]], values: dict[str, float]) -> None:
        if self.weights.lpips is None:
            self.skip("lpips", "no LPIPS weights (--lpips-backbone and --lpips-linear)")
            return
        values["lpips"] = float(np.concatenate([self.weights.lpips.frames_distance(*_common_frames(r.frames, g.frames))
                                                for r, g in pairs]).mean())

    def _lmd(self, videos: dict[str, Video], values: dict[str, float], extras: dict) -> None:
        named = [(n, self.reference[n], videos[n]) for n in sorted(videos) if n in self.reference]
        with_lms = [_common_frames(r.landmarks, g.landmarks) for _, r, g in named
                    if r.landmarks is not None and g.landmarks is not None]
        no_face = {n: g.landmarks_error or r.landmarks_error for n, r, g in named if g.landmarks_error or r.landmarks_error}
        for metric in ("m_lmd", "f_lmd", "mouth_r") if no_face else ():
            extras.setdefault("not_computed", {})[metric] = dict(no_face)
        if no_face and not with_lms:
            for metric in ("m_lmd", "f_lmd", "mouth_r"):
                self.skip(metric, "no face was found in the videos' frames")
            return
        if not with_lms:
            reason = "no landmarks for both the reference and the run (--landmarks none, no <name>.landmarks.npy)"
            self.skip("m_lmd", reason)
            self.skip("f_lmd", reason)
            self.skip("mouth_r", reason)
            return
        values["m_lmd"] = float(np.mean([landmarks.m_lmd(a, b) for a, b in with_lms]))
        values["f_lmd"] = float(np.mean([landmarks.f_lmd(a, b) for a, b in with_lms]))
        values["mouth_r"] = float(np.mean([landmarks.mouth_correlation(a, b) for a, b in with_lms]))

    def _csim(self, pairs: list[tuple[Video, Video]], values: dict[str, float]) -> None:
        if self.weights.face_embedder is None:
            self.skip("csim", "no face-embedding network (--face-embedder)")
            return
        values["csim"] = float(np.mean([quality.identity_similarity(self.weights.face_embedder, r.frames[0], g.frames)
                                        for r, g in pairs]))

    def _frechet(self, videos: dict[str, Video], values: dict[str, float]) -> None:
        real = [v.frames for v in self.reference.values()]
        fake = [v.frames for v in videos.values()]
        if self.weights.inception is None:
            self.skip("fid", "no Inception feature network (--inception)")
        else:
            values["fid"] = frechet.fid(self.weights.inception, np.concatenate(real), np.concatenate(fake))
        if self.weights.i3d is None:
            self.skip("fvd", "no I3D feature network (--i3d)")
        elif min(len(v) for v in real + fake) < frechet.FVD_CLIP_FRAMES:
            self.skip("fvd", f"a video is shorter than {frechet.FVD_CLIP_FRAMES} frames")
        else:
            values["fvd"] = frechet.fvd(self.weights.i3d, real, fake)

    def _sync(self, videos: dict[str, Video], values: dict[str, float], extras: dict) -> None:
        if self.weights.syncnet is None:
            self.skip("lse_c", "no SyncNet weights (--syncnet)")
            self.skip("lse_d", "no SyncNet weights (--syncnet)")
            return

        def scores(video: Video) -> SyncScores:
            if round(video.fps) != SYNC_FPS:
                raise EmodiffError(f"SyncNet needs {SYNC_FPS} fps video (evaluate --fps {SYNC_FPS}).")
            return sync_scores(self.weights.syncnet, video.frames, video_speech(video), video.fps)

        not_computed = extras.setdefault("not_computed", {}).setdefault("lse_c", {})
        extras["not_computed"]["lse_d"] = not_computed
        computed = list(_per_video(videos, scores, not_computed).values())
        if not computed:
            self.skip("lse_c", f"no {SYNC_FPS} fps video with speech")
            self.skip("lse_d", f"no {SYNC_FPS} fps video with speech")
            return
        values["lse_c"] = float(np.mean([s.lse_c for s in computed]))
        values["lse_d"] = float(np.mean([s.lse_d for s in computed]))

    def _emotion(self, videos: dict[str, Video], values: dict[str, float], extras: dict) -> None:
        labelled = [v for v in videos.values() if v.emotion is not None]
        reason = ("no emotion classifier (--emotion-classifier)" if self.weights.emotion_classifier is None
                  else None if labelled else "no video has an emotion label")
        if reason:
            self.skip("emo_acc", reason)
            self.skip("emo_acc_vote", reason)
            return
        result = emotion_accuracy([frame_logits(self.weights.emotion_classifier, v.frames) for v in labelled],
                                  [EMOTIONS.index(v.emotion) for v in labelled])
        values["emo_acc"], values["emo_acc_vote"] = result["emo_acc"], result["emo_acc_vote"]
        extras["per_class"] = result["per_class"]

    def _intensity(self, videos: dict[str, Video], values: dict[str, float], extras: dict) -> None:
        sweeps = _intensity_sweeps(videos, need_expression=True)
        if sweeps:
            values["flie"] = float(np.mean([linearity.flie([v.expression for v in s]) for s in sweeps]))
            extras["flie_curves"] = [{"k": [v.constant_intensity for v in s],
                                      "mean_expression": [v.expression.mean(axis=0).tolist() for v in s]}
                                     for s in sweeps]
        else:
            self.skip("flie", "no series with expression vectors at three or more constant intensities")
        lpips_sweeps = _intensity_sweeps(videos, need_expression=False)
        if self.weights.lpips is None or not lpips_sweeps:
            self.skip("lie", "no LPIPS weights" if self.weights.lpips is None
                      else "no series of videos at three or more constant intensities")
        else:
            values["lie"] = float(np.mean([linearity.lie(self.weights.lpips, [v.frames for v in s]) for s in lpips_sweeps]))
        with_expression = {n: v for n, v in videos.items() if v.expression is not None}
        if not with_expression:
            for key in ("intensity_l2", "beat_align", "diversity"):
                self.skip(key, "no expression vectors (<name>.expression.npy)")
            return
        values["diversity"] = framewise.diversity([v.expression for v in with_expression.values()])
        not_computed = extras.setdefault("not_computed", {})
        beat_align = _per_video(with_expression, video_beat_align, not_computed.setdefault("beat_align", {}))
        if beat_align:
            values["beat_align"] = float(np.mean(list(beat_align.values())))
        else:
            self.skip("beat_align", "no video has expression vectors and speech")
        if not self.intensity_measure.emotions:
            self.skip("intensity_l2", "no reference video with an emotion, a target intensity and expression "
                                      "vectors to fit the intensity measure on")
            return
        targets = {n: v for n, v in with_expression.items() if v.intensity is not None and v.emotion != "neutral"}
        measured = _per_video(targets, lambda v: self.intensity_measure.read(v.expression, v.emotion, v.identity_key),
                              not_computed.setdefault("intensity_l2", {}))
        if measured:
            values["intensity_l2"] = float(np.mean([framewise.intensity_l2(targets[n].intensity, k) for n, k in measured.items()]))
            extras["intensity_curves"] = {n: {"target": targets[n].intensity.tolist(), "measured": k.tolist()}
                                          for n, k in measured.items()}
        else:
            self.skip("intensity_l2", "no video with an emotion, a target intensity and expression vectors")


def evaluate_runs(reference: dict[str, Video], runs: dict[str, dict[str, Video]], weights: Weights,
                  settings: dict | None = None) -> dict:
    """Metrics of the reference (as a run: the ground-truth row) and of every run; see the module docstring."""
    report: dict = {"settings": settings or {}, "metrics": {}, "extras": {}, "skipped": {}}
    evaluator = RunEvaluator(weights, reference)
    report["settings"]["intensity measure"] = describe_intensity_measure(evaluator.intensity_measure)
    for name, videos in tqdm([(REFERENCE_RUN, reference), *runs.items()], desc="evaluate runs"):
        report["metrics"][name], report["extras"][name] = evaluator.evaluate(videos) if videos else ({}, {})
    report["skipped"] = {k: r for k, r in evaluator.skipped.items()
                         if not any(k in m for m in report["metrics"].values())}
    return report


# ---------------------------------------------------------------------------------------------- report

def _format(value: float | None) -> str:
    if value is None:
        return "–"
    if math.isinf(value):
        return "∞"
    return f"{value:.4g}"


def report_markdown(report: dict) -> str:
    """The report as a Markdown table (runs × metrics) plus settings and skipped metrics."""
    keys = [m for m in METRICS if any(m[0] in row for row in report["metrics"].values())]
    lines = ["# emodiff evaluation", ""]
    lines += [f"- {k}: {v}" for k, v in report["settings"].items()] + [""]
    lines.append("| run | " + " | ".join(f"{title} {arrow}" for _, title, arrow in keys) + " |")
    lines.append("|---" * (len(keys) + 1) + "|")
    for run, row in report["metrics"].items():
        lines.append(f"| {run} | " + " | ".join(_format(row.get(k)) for k, _, _ in keys) + " |")
    if report["skipped"]:
        lines += ["", "Skipped:", ""] + [f"- {k}: {why}" for k, why in report["skipped"].items()]
    titles = {key: title for key, title, _ in METRICS}
    not_computed = [f"- {titles[metric]}, {run}/{name}: {why}" for run, extras in report["extras"].items()
                    for metric, reasons in extras.get("not_computed", {}).items() for name, why in reasons.items()]
    if not_computed:
        lines += ["", "Not computed for some videos (n/a; the run's value is the mean over its other videos):", ""]
        lines += not_computed
    if report.get("left_out"):
        lines += ["", "Videos left out (not read):", ""] + [f"- {name}: {why}" for name, why in report["left_out"].items()]
    return "\n".join(lines) + "\n"


def report_csv(report: dict) -> str:
    keys = [k for k, _, _ in METRICS]
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["run", *keys])
    for run, row in report["metrics"].items():
        writer.writerow([run, *(row.get(k, "") for k in keys)])
    return buffer.getvalue()


def write_plots(report: dict, out_dir: Path) -> list[Path]:
    """Intensity curves (target vs measured), per-emotion accuracy and FLIE curves, as PNG files."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []

    def save(fig: "plt.Figure", name: str) -> None:
        path = out_dir / name
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=100)
        plt.close(fig)
        written.append(path)

    extras = report["extras"]
    curves = {run: e["intensity_curves"] for run, e in extras.items() if "intensity_curves" in e}
    if curves:
        fig, axes = plt.subplots(1, len(curves), figsize=(4.5 * len(curves), 3.5), squeeze=False)
        for ax, (run, per_video) in zip(axes[0], curves.items()):
            # schedules that vary over time first: they show frame-wise control best
            ordered = sorted(per_video.items(), key=lambda item: np.ptp(item[1]["target"]) == 0)
            for name, c in ordered[:4]:
                line, = ax.plot(c["measured"], label=f"{name} measured")
                ax.plot(c["target"], "--", color=line.get_color(), label=f"{name} target")
            ax.set(title=run, xlabel="frame", ylabel="intensity k")
            ax.legend(fontsize=6)
        save(fig, "intensity_curves.png")
    per_class = {run: e["per_class"] for run, e in extras.items() if "per_class" in e}
    if per_class:
        fig, ax = plt.subplots(figsize=(8, 3.5))
        width = 0.8 / len(per_class)
        for r, (run, table) in enumerate(per_class.items()):
            x = np.array([EMOTIONS.index(e) for e in table]) + r * width
            ax.bar(x, [t["mean_logits"] for t in table.values()], width, label=run)
        ax.set_xticks(np.arange(len(EMOTIONS)) + 0.4 - width / 2, EMOTIONS, rotation=30)
        ax.set(ylabel="video accuracy", ylim=(0, 1), title="EmoAcc per emotion")
        ax.legend(fontsize=7)
        save(fig, "emotion_accuracy.png")
    flie = {run: e["flie_curves"] for run, e in extras.items() if "flie_curves" in e}
    if flie:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for r, (run, sweeps) in enumerate(flie.items()):
            for i, s in enumerate(sweeps):
                means = np.asarray(s["mean_expression"])
                progress = np.linalg.norm(means - means[0], axis=1) / max(np.linalg.norm(means[-1] - means[0]), 1e-12)
                ax.plot(s["k"], progress, "o-", color=f"C{r}", alpha=0.7, label=run if i == 0 else None)
        ax.plot([0, 1], [0, 1], "k:", label="linear")
        ax.set(xlabel="target intensity k", ylabel="‖ē_k − ē_0‖ / ‖ē_max − ē_0‖", title="FLIE curves")
        ax.legend(fontsize=7)
        save(fig, "flie_curves.png")
    rows = report["metrics"]
    shown = [m for m in METRICS if any(m[0] in row and math.isfinite(row[m[0]]) for row in rows.values())]
    if shown:
        colour = {run: f"C{i}" for i, run in enumerate(rows)}
        fig, axes = plt.subplots(1, len(shown), figsize=(2.2 * len(shown), 3), squeeze=False)
        for ax, (key, title, arrow) in zip(axes[0], shown):
            names = [run for run, row in rows.items() if key in row and math.isfinite(row[key])]
            ax.bar(range(len(names)), [rows[run][key] for run in names], color=[colour[run] for run in names])
            ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=7)
            ax.set_title(f"{title} {arrow}", fontsize=9)
        save(fig, "metrics.png")
    return written


def _json_safe(obj):
    """Strict JSON: non-finite floats (PSNR of identical videos) become the strings "inf" / "-inf" / "nan"."""
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    return obj


def write_report(report: dict, out_dir: str | Path) -> list[Path]:
    """metrics.md, metrics.csv, metrics.json (∞ written as "inf") and the plots, each written atomically."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out_dir / "metrics.md", report_markdown(report))
    write_text_atomic(out_dir / "metrics.csv", report_csv(report))
    write_json_atomic(out_dir / "metrics.json", _json_safe(report))
    return [out_dir / "metrics.md", out_dir / "metrics.csv", out_dir / "metrics.json", *write_plots(report, out_dir)]


# ---------------------------------------------------------------------------------------------- runs

def load_weights(files: WeightFiles, device: str | None = None) -> Weights:
    """The networks of `files` on `device` (default: cuda when available, else cpu)."""
    weights = Weights()
    if bool(files.lpips_backbone) != bool(files.lpips_linear):
        raise EmodiffError("LPIPS needs both --lpips-backbone and --lpips-linear.")
    if files.lpips_backbone:
        weights.lpips = LPIPS.from_files(files.lpips_trunk, files.lpips_backbone, files.lpips_linear)
    if files.inception:
        weights.inception = frechet.load_feature_network(files.inception)
    if files.i3d:
        weights.i3d = frechet.load_feature_network(files.i3d)
    if files.face_embedder:
        weights.face_embedder = frechet.load_feature_network(files.face_embedder)
    if files.syncnet and Path(files.syncnet).is_file():
        weights.syncnet = SyncNet.from_syncnet_v2(files.syncnet)
    elif files.syncnet:
        weights.syncnet = _load_saved_model(SyncNet, files.syncnet)
    if files.emotion_classifier:
        weights.emotion_classifier = _load_saved_model(EmotionClassifier, files.emotion_classifier)
    torch_device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    for name in vars(weights):
        if getattr(weights, name) is not None:
            setattr(weights, name, getattr(weights, name).to(torch_device))
    return weights


def _load_saved_model(cls: type, folder: str) -> torch.nn.Module:
    if not (Path(folder) / "config.json").is_file():
        raise EmodiffError(f"{folder} is not a saved {cls.__name__} folder (config.json is missing).")
    return cls.from_pretrained(folder).eval()


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


def evaluate_folders(reference_dir: Path, runs: dict[str, Path], out: Path, files: WeightFiles = WeightFiles(),
                     fps: float = 25.0, size: int = 128, aligned: bool = False, landmarks: str = "mediapipe",
                     expression: str = "landmarks", deca_model: str | None = None, flame_model: str | None = None,
                     device: str | None = None, super_resolution: str | None = None) -> dict:
    """Score every run folder against the reference folder (`size`-pixel crops at `fps`, `--aligned` crops only
    resized, the `landmarks` backend, `expression` vectors; with `super_resolution` also every run upscaled by it as
    NAME+sr), print the report and write it to `out`; returns the report."""
    if expression == "deca" and not (deca_model and flame_model):
        raise EmodiffError("--expression deca needs --deca-model and --flame-model.")
    weights = load_weights(files, device)
    ref_paths = video_paths(reference_dir)
    run_paths = {name: video_paths(folder) for name, folder in runs.items()}
    if super_resolution:
        run_paths.update(super_resolved_runs(run_paths, load_upscaler(super_resolution),
                                             Path(out) / "super_resolved"))
    total = len(ref_paths) + sum(len(p) for p in run_paths.values())
    with tqdm(total=total, desc="read and align videos") as bar:
        left_out: dict[str, str] = {}

        def load_all(run: str, paths: dict[str, Path], fallback: Path | None) -> dict[str, Video]:
            videos = {}
            for name, path in paths.items():
                try:
                    videos[name] = load_video(path, fps, size, aligned,
                                              None if landmarks == "none" else landmarks, fallback)
                except UnusableVideo as err:
                    left_out[f"{run}/{name}"] = str(err)
                bar.update(1)
            return videos

        reference = load_all(REFERENCE_RUN, ref_paths, None)
        loaded = {name: load_all(name, paths, reference_dir) for name, paths in run_paths.items()}
    if not reference:
        raise EmodiffError(f"No reference video could be read: {next(iter(left_out.values()))}")
    if expression == "deca":
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        missing = deca_expressions(reference, loaded, deca_model, flame_model, device)
    elif expression == "landmarks":
        missing = landmark_expressions(reference, loaded)
    else:
        missing = []
    settings = {"fps": fps, "crop": f"{size}×{size} ({'pre-aligned' if aligned else 'aligned'})",
                "landmarks": landmarks,
                "expression vectors": expression + (f" (none for {len(missing)} videos: {', '.join(missing[:5])})"
                                                         if missing else ""),
                "reference": str(reference_dir),
                "super-resolution": "; ".join(f"{name}: {run_super_resolution(paths)}" for name, paths in run_paths.items()),
                "videos": {name: len(v) for name, v in {REFERENCE_RUN: reference, **loaded}.items()}}
    report = evaluate_runs(reference, loaded, weights, settings)
    report["left_out"] = left_out
    files = write_report(report, out)
    print(report_markdown(report))
    print("Wrote " + ", ".join(str(f) for f in files))
    return report
