"""Evaluate generated videos against a reference set and compare pipelines with the same metrics (`emodiff evaluate`,
described in emodiff/cli/evaluate.py, which gives the folder convention and sidecars).

`evaluate_folders` reads, resamples and face-aligns every video (the crop code of `emodiff prepare`;
emodiff/metrics/videos.py), computes every metric whose weights and inputs are present (the others are listed as
skipped with the reason; a video that cannot be read is left out with its reason; emodiff/metrics/table.py) and
writes metrics.md, metrics.csv, metrics.json and PNG plots (emodiff/metrics/report.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from emodiff.errors import EmodiffError
from emodiff.metrics import frechet
from emodiff.metrics.lpips import LPIPS
from emodiff.metrics.report import report_markdown, write_report
from emodiff.metrics.super_resolution import load_upscaler
from emodiff.metrics.table import Weights, evaluate_runs
from emodiff.metrics.videos import (REFERENCE_RUN, deca_expressions, landmark_expressions, load_runs,
                                    run_super_resolution, super_resolved_runs, video_paths)
from emodiff.models.emotion_classifier import EmotionClassifier
from emodiff.models.syncnet import SyncNet
from emodiff.models.weights import load_component


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
    return load_component(folder, cls, f"{folder} is not a saved {cls.__name__} folder (config.json is missing).")


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
    reference, loaded, left_out = load_runs(ref_paths, run_paths, reference_dir, fps, size, aligned,
                                            None if landmarks == "none" else landmarks)
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
