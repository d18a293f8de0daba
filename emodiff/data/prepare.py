"""Prepare raw videos into a clip store: aligned face crops, audio, features, landmarks, expressions (docs/design.md §3-4).

`prepare` runs two phases: per-clip extraction in worker processes (each clip written atomically and listed as
`extracted`, or `failed` with its reason), then store-level finalisation (the expression basis, expression.npy and
intensity.npy, refitted when the set of extracted clips changes). Every step is a rename or one manifest line, so
a rerun continues a killed run; `emodiff prepare --help` (emodiff/cli/prepare.py) describes it in full.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from emodiff.data import align
from emodiff.data.audio_features import extract_audio_features, get_audio_encoder
from emodiff.data.expression import (
    INTENSITY_PERCENTILE, ExpressionExtractor, StoreExpressionExtractor, identity_key,
    least_expressive_frames, make_expression_extractor, raw_intensity)
from emodiff.data.labels import parse_label
from emodiff.data.landmarks import largest_face, make_detector
from emodiff.data.media import SAMPLE_RATE, load_audio, probe, read_video
from emodiff.data.store import ARRAY_NAMES, Clip, ClipStore
from emodiff.files import save_npy_atomic, write_json_atomic
from emodiff.errors import EmodiffError
from emodiff.native_logs import native_logs_silenced

VIDEO_EXTENSIONS = (".mp4", ".mov", ".avi", ".mkv", ".webm")
MIN_FACE_FRACTION = 0.5  # a clip needs a face in at least half of its frames
SETTINGS_FILE = "prepare.json"
FINALISED_FILE = "finalised.json"
INTENSITY_FILE = "intensity.json"


@dataclass(frozen=True)
class PrepareSettings:
    """What every clip of a store must share."""

    size: int = 128
    fps: float = 25.0
    audio_features: str = "mel"
    audio_model: str | None = None
    expression: str = "landmarks"
    landmarks: str = "mediapipe"


@dataclass(frozen=True)
class Source:
    path: Path
    clip_id: str


# -- sources -----------------------------------------------------------------------------------
def clip_id_for(relative: str) -> str:
    """A stable id from a path relative to its SRC: the path without suffix, '/' -> '_', other
    unsafe characters -> '-', plus a short hash of the path when characters had to be replaced."""
    stem = relative.rsplit(".", 1)[0]
    safe = re.sub(r"[^A-Za-z0-9_.-]", "-", stem.replace("/", "_")).lstrip(".")
    if safe != stem.replace("/", "_"):
        safe += "-" + hashlib.sha1(relative.encode()).hexdigest()[:8]
    return safe


def find_sources(inputs: list[str | Path]) -> list[Source]:
    """Video files named or found (recursively) under the inputs, sorted by clip id."""
    sources: dict[str, Path] = {}
    for given in map(Path, inputs):
        if given.is_dir():
            files = [(p, p.relative_to(given).as_posix()) for p in given.rglob("*")
                     if p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file()]
        elif given.is_file():
            files = [(given, given.name)]
        else:
            raise EmodiffError(f"Source {given} does not exist.")
        for path, relative in files:
            clip_id = clip_id_for(relative)
            if clip_id in sources and sources[clip_id] != path:
                raise EmodiffError(f"{path} and {sources[clip_id]} would get the same clip id '{clip_id}'; "
                                   "give their common parent folder as SRC so that the ids include the folder names.")
            sources[clip_id] = path
    if not sources:
        raise EmodiffError(f"No video files ({', '.join(VIDEO_EXTENSIONS)}) found in {', '.join(map(str, inputs))}.")
    return [Source(path, clip_id) for clip_id, path in sorted(sources.items())]


def parse_shard(shard: str | None) -> tuple[int, int]:
    """(index, count) from 'i/n', else from accelerate's RANK / WORLD_SIZE, else (0, 1)."""
    if shard is None:
        return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    match = re.fullmatch(r"(\d+)/(\d+)", shard)
    if not match or not int(match[1]) < int(match[2]):
        raise EmodiffError(f"--shard must look like i/n with 0 <= i < n, got '{shard}'.")
    return int(match[1]), int(match[2])


# -- phase 1: one clip -------------------------------------------------------------------------
def interpolate_missing(values: np.ndarray, found: np.ndarray) -> np.ndarray:
    """Fill frames where `found` is False by linear interpolation in time (ends: nearest)."""
    if found.all():
        return values
    index = np.arange(len(values))
    known = index[found]
    right = np.clip(np.searchsorted(known, index), 1, len(known) - 1) if len(known) > 1 else np.zeros_like(index)
    left = right - 1 if len(known) > 1 else right
    span = np.maximum(known[right] - known[left], 1)
    weight = np.clip((index - known[left]) / span, 0.0, 1.0).reshape(-1, *[1] * (values.ndim - 1))
    return ((1 - weight) * values[found][left] + weight * values[found][right]).astype(values.dtype)


def detect_faces(path: Path, settings: PrepareSettings) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Pass 1: largest face per frame -> (T, 68, 2) points and (T, N, 3) mesh, gaps interpolated. The tracker's
    C++ log lines are silenced for the whole pass (they also come between frames)."""
    faces_per_frame = []
    with native_logs_silenced():
        detector = make_detector(settings.landmarks, video=True)
        try:
            for frame in read_video(path, settings.fps):
                faces_per_frame.append(detector.detect(frame))
        finally:
            detector.close()
    chosen = [largest_face(faces) for faces in faces_per_frame]
    found = np.array([face is not None for face in chosen])
    n_frames, n_found = len(found), int(found.sum())
    if n_found == 0:
        raise EmodiffError(f"No face was found in any of the {n_frames} frames of {path}.")
    if n_found < MIN_FACE_FRACTION * n_frames:
        raise EmodiffError(f"A face was found in only {n_found} of the {n_frames} frames of {path} "
                           f"(at least {MIN_FACE_FRACTION:.0%} are needed).")
    first = chosen[int(found.argmax())]
    points = np.stack([(face or first).points68 for face in chosen])
    mesh = np.stack([(face or first).mesh for face in chosen])
    several = sum(len(faces) > 1 for faces in faces_per_frame)
    report = {"face_found_frames": n_found, "several_faces_frames": several,
              "landmarks_backend": {"name": detector.name, "version": detector.version},
              "warnings": [f"several faces in {several} frames; the largest was used"] if several else []}
    return interpolate_missing(points, found), interpolate_missing(mesh, found), report


def crop_frames(path: Path, boxes: np.ndarray, settings: PrepareSettings) -> np.ndarray:
    """Pass 2: decode again and cut the smoothed crop boxes (memory stays flat in the source size)."""
    crops = np.empty((len(boxes), settings.size, settings.size, 3), np.uint8)
    count = 0
    for count, frame in enumerate(read_video(path, settings.fps), 1):
        if count > len(boxes):
            break
        crops[count - 1] = align.crop(frame, boxes[count - 1], settings.size)
    if count != len(boxes):
        raise EmodiffError(f"{path} decoded to {count} frames the second time instead of {len(boxes)}.")
    return crops


def clip_audio(path: Path, n_frames: int, settings: PrepareSettings) -> tuple[np.ndarray, np.ndarray]:
    """16 kHz mono audio trimmed or zero-padded to the frames, and its frame-aligned features."""
    audio = load_audio(path)
    n_samples = int(round(n_frames * SAMPLE_RATE / settings.fps))
    audio = np.pad(audio[:n_samples], (0, max(0, n_samples - len(audio))))
    features = extract_audio_features(audio, settings.fps, kind=settings.audio_features, model=settings.audio_model)
    if len(features) != n_frames:
        raise EmodiffError(f"Audio features of {path} have {len(features)} frames, the video has {n_frames}.")
    return audio, features


def reprojection_summary(error: np.ndarray) -> dict[str, float]:
    """Mean and 95th percentile of a clip's per-frame landmark re-projection error (DECA's fit quality)."""
    return {"mean": round(float(error.mean()), 6), "p95": round(float(np.percentile(error, 95)), 6)}


def extract_clip(store: ClipStore, source: Source, settings: PrepareSettings,
                 extractor: ExpressionExtractor) -> dict[str, Any]:
    """Phase 1 for one source; returns its manifest entry (status `extracted` or `failed`)."""
    label = parse_label(source.path)
    entry: dict[str, Any] = {"id": source.clip_id, "source": str(source.path), "identity": label.identity,
                             "emotion": label.emotion, "level": label.level, "fps": settings.fps}
    started = time.perf_counter()
    try:
        info = probe(source.path)
        if not info.has_video:
            raise EmodiffError(f"{source.path} has no video stream.")
        points, mesh, face_report = detect_faces(source.path, settings)
        detected = time.perf_counter()
        boxes = align.smooth_boxes(points)
        crops = crop_frames(source.path, boxes, settings)
        landmarks = np.stack([align.to_crop_coords(p, b, settings.size) for p, b in zip(points, boxes)])
        cropped = time.perf_counter()
        arrays: dict[str, np.ndarray] = {"frames": crops, "landmarks": landmarks}
        audio = None
        if info.has_audio:
            audio, arrays["audio_feats"] = clip_audio(source.path, len(crops), settings)
        per_clip = extractor.extract(crops, landmarks, mesh)
        extras = {k: v for k, v in per_clip.items() if k not in ARRAY_NAMES}
        arrays.update({k: v for k, v in per_clip.items() if k in ARRAY_NAMES})
        finished = time.perf_counter()
        meta = {
            **{k: entry[k] for k in ("source", "identity", "emotion", "level", "fps")},
            "size": settings.size, "has_audio": audio is not None,
            "audio_features": ({"kind": settings.audio_features, "model": settings.audio_model}
                               if audio is not None else None),
            "expression_extractor": {"name": extractor.name, "version": extractor.version},
            **({"reprojection_error": reprojection_summary(per_clip["reprojection_error"])}
               if "reprojection_error" in per_clip else {}),
            "source_video": {"duration": info.duration, "fps": info.fps, "width": info.width, "height": info.height},
            "crop_boxes": np.round(boxes, 2).tolist(), "crop_rule": {
                "centre": "nose tip (iBUG 30)", "side": f"{align.CROP_SCALE} x face extent",
                "smoothing": f"centred moving average, centre {align.CENTER_WINDOW} / side {align.SIDE_WINDOW} frames"},
            **face_report, "stage": "extracted",
            "timings": {"detect_s": round(detected - started, 3), "crop_s": round(cropped - detected, 3),
                        "audio_expression_s": round(finished - cropped, 3)},
        }
        clip = store.write_clip(source.clip_id, arrays, meta, audio=audio)
        for name, array in extras.items():
            save_npy_atomic(clip.path / f"{name}.npy", array)
        entry.update(status="extracted", n_frames=len(crops), has_audio=audio is not None,
                     warnings=face_report["warnings"])
    except EmodiffError as err:
        entry.update(status="failed", error=str(err))
    except Exception as err:  # an unexpected failure of one clip must not stop the run
        entry.update(status="failed", error=f"unexpected {type(err).__name__}: {err}")
    entry["seconds"] = round(time.perf_counter() - started, 3)
    return entry


_worker_extractor: ExpressionExtractor | None = None  # built once per worker process by _init_worker


def _extract_in_worker(job: tuple[str, Source, PrepareSettings]) -> dict[str, Any]:
    root, source, settings = job
    return extract_clip(ClipStore(root), source, settings, _worker_extractor)


def _init_worker(expression: str, options: dict[str, Any]) -> None:
    """One thread per worker process (the parallelism is across processes) and its own extractor."""
    global _worker_extractor
    import cv2
    import torch

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    _worker_extractor = make_expression_extractor(expression, **options)


# -- phase 2: the store ------------------------------------------------------------------------
def _demote(store: ClipStore, entry: dict[str, Any]) -> None:
    store.append_manifest({**entry, "status": "extracted"})


def clip_expression(extractor: Any, clip: Clip) -> np.ndarray:
    if isinstance(extractor, StoreExpressionExtractor):
        return extractor.transform(clip)
    return np.asarray(clip.expression, dtype=np.float32)


def neutral_expressions(extractor: Any, clips: list[Clip]) -> dict[str, np.ndarray]:
    """e^N per identity: the mean expression of its MEAD neutral clips (identities that have them)."""
    sums: dict[str, list] = {}
    for clip in clips:
        if clip.emotion == "neutral":
            expression = clip_expression(extractor, clip)
            total = sums.setdefault(identity_key(clip), [0.0, 0])
            total[0] = total[0] + expression.sum(axis=0)
            total[1] += len(expression)
    return {identity: total / count for identity, (total, count) in sums.items()}


def clip_neutral(expression: np.ndarray, clip: Clip, neutral: dict[str, np.ndarray]) -> np.ndarray:
    """The identity's e^N, else the mean of the clip's 10 % frames with the smallest norm."""
    if identity_key(clip) in neutral:
        return neutral[identity_key(clip)]
    return expression[least_expressive_frames(expression, np.zeros(expression.shape[1]))].mean(axis=0)


def finalise(store: ClipStore, extractor: ExpressionExtractor) -> int:
    """Phase 2: fit the store statistics if the clip set changed, then finalise every clip not yet ok."""
    manifest = store.manifest()
    ready = sorted(cid for cid, e in manifest.items()
                   if e.get("status") in ("extracted", "ok") and store.is_complete(cid))
    if not ready:
        return 0
    fingerprint = hashlib.sha1("\n".join([extractor.name, extractor.version, *ready]).encode()).hexdigest()[:16]
    done_path, intensity_path = store.stats_dir / FINALISED_FILE, store.stats_dir / INTENSITY_FILE
    clips = [store.clip(cid) for cid in ready]
    fitted = done_path.is_file() and json.loads(done_path.read_text()).get("fingerprint") == fingerprint
    if fitted:
        if isinstance(extractor, StoreExpressionExtractor):
            extractor.load(store)
        stats = json.loads(intensity_path.read_text())
        neutral = {k: np.array(v) for k, v in stats["neutral"].items()}
    else:
        for cid in ready:
            if manifest[cid]["status"] == "ok":
                _demote(store, manifest[cid])
                manifest[cid] = {**manifest[cid], "status": "extracted"}
        if isinstance(extractor, StoreExpressionExtractor):
            extractor.fit(store, ready)
        neutral = neutral_expressions(extractor, clips)
        raw = np.concatenate([raw_intensity(e, clip_neutral(e, c, neutral))
                              for c in clips for e in [clip_expression(extractor, c)]])
        stats = {"percentile": INTENSITY_PERCENTILE, "scale": float(max(np.percentile(raw, INTENSITY_PERCENTILE), 1e-8)),
                 "neutral": {k: v.tolist() for k, v in neutral.items()}}
        write_json_atomic(intensity_path, stats)
        write_json_atomic(done_path, {"fingerprint": fingerprint, "clips": len(ready)})
    pending = [c for c in clips if manifest[c.clip_id]["status"] != "ok"]
    for clip in tqdm(pending, desc="finalise", unit="clip", disable=not pending):
        expression = clip_expression(extractor, clip)
        reference = clip_neutral(expression, clip, neutral)
        intensity = np.clip(raw_intensity(expression, reference) / stats["scale"], 0.0, 1.0)
        store.update_clip(clip.clip_id, {"expression": expression, "intensity": intensity}, {
            "stage": "ok", "finalised": fingerprint,
            "intensity_reference": ("neutral clips of the identity" if identity_key(clip) in neutral
                                    else "the clip's 10% least expressive frames"),
        })
        store.append_manifest({**manifest[clip.clip_id], "status": "ok"})
    return len(pending)


# -- the run -----------------------------------------------------------------------------------
def check_settings(store: ClipStore, settings: PrepareSettings) -> None:
    path = store.stats_dir / SETTINGS_FILE
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved != asdict(settings):
            differ = ", ".join(f"{k}={saved.get(k)}" for k in saved if saved.get(k) != asdict(settings).get(k))
            raise EmodiffError(f"{store.root} was prepared with {differ}; use the same settings or another --out.")
    else:
        write_json_atomic(path, asdict(settings))


def prepare(inputs: list[str | Path], out: str | Path, settings: PrepareSettings = PrepareSettings(),
            workers: int = 1, shard: str | None = None, retry_failed: bool = False,
            deca_model: str | Path | None = None, flame_model: str | Path | None = None,
            device: str = "cpu") -> dict[str, Any]:
    """Run both phases (module docstring); returns the summary counts. deca_model, flame_model and
    device are used by the `deca` extractor only."""
    if settings.size < 16:
        raise EmodiffError(f"--size must be at least 16 pixels, got {settings.size}.")
    if settings.fps <= 0:
        raise EmodiffError(f"--fps must be positive, got {settings.fps}.")
    options = ({"deca_model": deca_model, "flame_model": flame_model, "device": device}
               if settings.expression == "deca" else {})
    extractor = make_expression_extractor(settings.expression, **options)  # missing model files fail here, once
    get_audio_encoder(settings.audio_features, settings.audio_model)  # a missing model fails here, once
    make_detector(settings.landmarks, video=False).close()  # a missing backend or its weights fail here, once
    index, count = parse_shard(shard)
    sources = find_sources(inputs)[index::count]
    store = ClipStore.create(out)
    check_settings(store, settings)
    if count == 1:
        store.remove_partials()
    manifest = store.manifest()

    def done(clip_id: str) -> bool:
        status = manifest.get(clip_id, {}).get("status")
        return not retry_failed if status == "failed" else status in ("extracted", "ok") and store.is_complete(clip_id)

    todo = [source for source in sources if not done(source.clip_id)]
    summary = {"extracted": 0, "failed": 0, "skipped": len(sources) - len(todo), "frames": 0}
    started = time.perf_counter()
    with tqdm(total=len(todo), desc="prepare", unit="clip", disable=not todo) as bar:
        if workers > 1 and len(todo) > 1:
            jobs = [(str(store.root), source, settings) for source in todo]
            with multiprocessing.get_context("spawn").Pool(min(workers, len(todo)), _init_worker,
                                                           (settings.expression, options)) as pool:
                for entry in pool.imap_unordered(_extract_in_worker, jobs):
                    _record(store, entry, summary, bar)
        else:
            for source in todo:
                _record(store, extract_clip(store, source, settings, extractor), summary, bar)
    summary["seconds"] = time.perf_counter() - started
    summary["finalised"] = finalise(store, extractor) if count == 1 else None
    summary["ok"] = len(store.clip_ids())
    return summary


def _record(store: ClipStore, entry: dict[str, Any], summary: dict[str, Any], bar: tqdm) -> None:
    store.append_manifest(entry)
    if entry["status"] == "failed":
        summary["failed"] += 1
        tqdm.write(f"failed: {entry['source']}: {entry['error']}")
    else:
        summary["extracted"] += 1
        for warning in entry["warnings"]:
            tqdm.write(f"warning: {entry['source']}: {warning}")
        summary["frames"] += entry["n_frames"]
    elapsed = max(bar.format_dict["elapsed"], 1e-9)
    bar.set_postfix(frames_per_s=f"{summary['frames'] / elapsed:.1f}", failed=summary["failed"])
    bar.update()
