"""Per-frame FLAME expression ψ from video frames, the paper's expression condition (docs/design.md §4.2).

EMOdiffhead conditions the denoiser on the 50 FLAME expression coefficients DECA regresses from
each frame. This runs our DECA-compatible coarse encoder on DECA's landmark crop and decodes the
code with FLAME to measure how well the predicted landmarks re-project onto the input ones.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from emodiff.errors import EmodiffError
from third_party.deca.assets import EMBEDDING_SOURCE, FLAME_SOURCE, load_flame_model, load_landmark_embedding
from third_party.deca.encoder import (
    CROP_SIZE, DECA_SOURCE, DecaEncoder, crop_boxes, crop_faces, load_deca_encoder, to_crop_normalised)
from third_party.deca.flame import Flame, orthographic_project
from third_party.deca.render import has_pytorch3d, landmark_overlay, mesh_overlay, save_png

EMBEDDING_NAME = "landmark_embedding.npy"


def find_landmark_embedding(*folders: Path) -> Path:
    """DECA's `landmark_embedding.npy` from the first folder that has it (DECA keeps it in data/)."""
    for folder in folders:
        if (folder / EMBEDDING_NAME).is_file():
            return folder / EMBEDDING_NAME
    raise EmodiffError(f"{EMBEDDING_NAME} not found next to the FLAME or DECA model "
                       f"({', '.join(str(f) for f in folders)}): get it from {EMBEDDING_SOURCE}")


def require_model_files(deca_model: str | os.PathLike | None,
                        flame_model: str | os.PathLike | None) -> tuple[Path, Path]:
    """The user's two files as paths; one EmodiffError names every one not given or not found
    (with its command-line option) and where to get it."""
    wanted = [("deca_model.tar", "--deca-model", deca_model, DECA_SOURCE),
              ("generic_model.pkl", "--flame-model", flame_model, FLAME_SOURCE)]
    missing = [(f"{name} ({option}, {'not given' if path is None else f'{path} not found'})", source)
               for name, option, path, source in wanted if path is None or not Path(path).is_file()]
    if missing:
        raise EmodiffError(f"DECA expressions need {' and '.join(what for what, _ in missing)}: "
                           f"get {' and '.join(source for _, source in missing)}.")
    return Path(deca_model), Path(flame_model)


class DecaExpressionExtractor:
    """FLAME expression, jaw and head pose per frame from DECA's coarse encoder.

    deca_model: DECA's `deca_model.tar`; flame_model: FLAME 2020 `generic_model.pkl` (or its
    `.npz` cache), both required (`require_model_files`); landmark_embedding: DECA's
    `landmark_embedding.npy`, by default looked up next to the FLAME model, then next to the DECA model.
    """

    name = "deca"
    version = "1"

    def __init__(self, deca_model: str | os.PathLike | None, flame_model: str | os.PathLike | None,
                 device: str | torch.device = "cpu", landmark_embedding: str | os.PathLike | None = None,
                 batch_size: int = 32) -> None:
        deca_model, flame_model = require_model_files(deca_model, flame_model)
        try:
            self.device = torch.device(device)
            torch.empty(0, device=self.device)
        except (RuntimeError, AssertionError) as err:  # unknown device type; CUDA absent or no such GPU
            raise EmodiffError(f"Device '{device}' cannot be used here: {str(err).splitlines()[0]}.") from None
        self.batch_size = batch_size
        self.encoder = load_deca_encoder(deca_model).to(self.device)
        flame = load_flame_model(flame_model)
        embedding = Path(landmark_embedding) if landmark_embedding is not None else \
            find_landmark_embedding(flame_model.parent, deca_model.parent)
        self.flame = Flame(flame, load_landmark_embedding(embedding)).to(self.device)

    def _fit(self, frames: np.ndarray, boxes: np.ndarray) -> tuple[torch.Tensor, dict[str, torch.Tensor],
                                                                      dict[str, torch.Tensor], torch.Tensor]:
        """Crops (B, 3, 224, 224), code parts, FLAME output and projected 2D landmarks (B, 68, 2)."""
        images = torch.from_numpy(frames).to(self.device).permute(0, 3, 1, 2).float() / 255
        crops = crop_faces(images, torch.from_numpy(boxes).to(self.device), CROP_SIZE)
        code = DecaEncoder.split(self.encoder(crops))
        mesh = self.flame(code["shape"], code["exp"], code["pose"])
        return crops, code, mesh, orthographic_project(mesh["landmarks2d"], code["cam"])

    @staticmethod
    def _check(frames: np.ndarray, landmarks68: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        frames, landmarks68 = np.asarray(frames), np.asarray(landmarks68, dtype=np.float64)
        if frames.ndim != 4 or not len(frames) or frames.shape[-1] != 3 or landmarks68.shape != (len(frames), 68, 2):
            raise EmodiffError(f"DECA needs frames (T, H, W, 3), T ≥ 1, and landmarks (T, 68, 2); got {frames.shape} "
                               f"and {landmarks68.shape}")
        return frames, landmarks68

    @torch.no_grad()
    def extract(self, frames: np.ndarray, landmarks68: np.ndarray, mesh: np.ndarray | None = None, *,
                progress: bool = False) -> dict[str, np.ndarray]:
        """frames uint8 (T, H, W, 3) RGB and their 68 landmarks (T, 68, 2) in pixels →
        expression (T, 50), jaw_pose (T, 3), global_pose (T, 3) axis-angle, and
        reprojection_error (T,): mean distance between FLAME's 68 projected landmarks and the
        input ones, in crop-normalised units (the crop spans [−1, 1]; 0.01 ≈ 1.1 px of 224).
        `mesh` is part of prepare's extractor interface; DECA reads only the image."""
        frames, landmarks68 = self._check(frames, landmarks68)
        boxes = crop_boxes(landmarks68)
        targets = to_crop_normalised(landmarks68, boxes)
        outputs: dict[str, list[np.ndarray]] = {k: [] for k in ("expression", "jaw_pose", "global_pose",
                                                                "reprojection_error")}
        starts = range(0, len(frames), self.batch_size)
        for start in tqdm(starts, desc="DECA", unit="batch", disable=not progress):
            batch = slice(start, start + self.batch_size)
            _, code, _, projected = self._fit(frames[batch], boxes[batch])
            target = torch.from_numpy(targets[batch]).to(projected)
            outputs["expression"].append(code["exp"].cpu().numpy())
            outputs["global_pose"].append(code["pose"][:, :3].cpu().numpy())
            outputs["jaw_pose"].append(code["pose"][:, 3:].cpu().numpy())
            outputs["reprojection_error"].append((projected - target).norm(dim=-1).mean(1).cpu().numpy())
        return {k: np.concatenate(v).astype(np.float32) for k, v in outputs.items()}

    @torch.no_grad()
    def save_overlay(self, frame: np.ndarray, landmarks68: np.ndarray, path: str | os.PathLike) -> Path:
        """PNG of one frame's fit on its crop: the shaded mesh when pytorch3d is installed, else the
        projected FLAME landmarks (red) over the input ones (green)."""
        frames, landmarks = self._check(np.asarray(frame)[None], np.asarray(landmarks68)[None])
        boxes = crop_boxes(landmarks)
        crops, code, mesh, projected = self._fit(frames, boxes)
        crop = (crops[0].permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
        if has_pytorch3d():
            image = mesh_overlay(crop, mesh["vertices"][0], self.flame.faces, code["cam"][0])
        else:
            image = landmark_overlay(crop, projected[0].cpu().numpy(), to_crop_normalised(landmarks, boxes)[0])
        return save_png(path, image)
