"""Face landmark backends behind one interface (docs/design.md §4.3).

A backend turns one RGB image into the faces it sees, each as iBUG-68 points (pixel x, y) and
a dense 3D mesh (pixel-scaled x, y, z). Backends: `mediapipe` (default; the face mesh model ships
in the 0.10.21 wheel, runs offline) and `fan` (face-alignment's FAN, the paper's detector; needs
the package and its weights on disk).

The 478-point MediaPipe mesh maps to iBUG-68 through the correspondence table published by
Peizhi Yan (github.com/PeizhiYan/Mediapipe_2_Dlib_Landmarks): each iBUG point is one mesh vertex
or the mean of two.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import numpy as np

from emodiff.errors import EmodiffError
from emodiff.native_logs import native_logs_silenced

# iBUG-68 index (0-based) -> MediaPipe mesh vertices averaged for it.
MEDIAPIPE_TO_IBUG68: tuple[tuple[int, ...], ...] = (
    # jaw 0-16
    (127,), (234,), (93,), (132, 58), (58, 172), (136,), (150,), (176,), (152,),
    (400,), (379,), (365,), (397, 288), (361,), (323,), (454,), (356,),
    # brows 17-26
    (70,), (63,), (105,), (66,), (107,), (336,), (296,), (334,), (293,), (300,),
    # nose bridge 27-30, nostrils 31-35
    (168, 6), (197, 195), (5,), (4,), (75,), (97,), (2,), (326,), (305,),
    # eyes 36-47
    (33,), (160,), (158,), (133,), (153,), (144,), (362,), (385,), (387,), (263,), (373,), (380,),
    # outer lips 48-59, inner lips 60-67
    (61,), (39,), (37,), (0,), (267,), (269,), (291,), (321,), (314,), (17,), (84,), (91,),
    (78,), (82,), (13,), (312,), (308,), (317,), (14,), (87,),
)
NOSE_TIP = 30  # iBUG-68 index of the nose tip: the crop centre (EMOdiffhead §4.1)


def mesh_to_ibug68(mesh: np.ndarray) -> np.ndarray:
    """(..., 478, C) MediaPipe mesh -> (..., 68, C) iBUG-68 points via MEDIAPIPE_TO_IBUG68."""
    return np.stack([mesh[..., list(ids), :].mean(axis=-2) for ids in MEDIAPIPE_TO_IBUG68], axis=-2)


@dataclass
class Face:
    """One detected face: iBUG-68 points (68, 2) in pixels and a dense mesh (N, 3)."""

    points68: np.ndarray
    mesh: np.ndarray

    @property
    def area(self) -> float:
        extent = self.points68.max(axis=0) - self.points68.min(axis=0)
        return float(extent[0] * extent[1])


class LandmarkDetector(Protocol):
    name: str
    version: str

    def detect(self, image_rgb: np.ndarray) -> list[Face]:
        """All faces in one RGB uint8 image, in no particular order."""


class MediaPipeDetector:
    """MediaPipe face mesh (478 points with the iris refinement). `video=True` tracks across
    consecutive frames (fast); `video=False` detects every image independently. Up to two faces
    are reported, enough to notice a second face. Its C++ log lines are silenced during each call
    (`emodiff.native_logs`); in video mode its graph threads also log between calls, so a caller that tracks a
    video keeps the whole pass inside `native_logs_silenced()` (`emodiff.data.prepare.detect_faces`)."""

    name = "mediapipe"

    def __init__(self, video: bool = True):
        import mediapipe as mp

        self.version = mp.__version__
        with native_logs_silenced():
            self._mesh = mp.solutions.face_mesh.FaceMesh(
                static_image_mode=not video, max_num_faces=2, refine_landmarks=True,
                min_detection_confidence=0.5, min_tracking_confidence=0.5)

    def detect(self, image_rgb: np.ndarray) -> list[Face]:
        height, width = image_rgb.shape[:2]
        with native_logs_silenced():
            result = self._mesh.process(np.ascontiguousarray(image_rgb))
        faces = []
        for landmarks in result.multi_face_landmarks or []:
            mesh = np.array([(p.x, p.y, p.z) for p in landmarks.landmark], dtype=np.float32)
            mesh *= np.array([width, height, width], dtype=np.float32)  # z uses x's scale
            faces.append(Face(mesh_to_ibug68(mesh)[:, :2], mesh))
        return faces

    def close(self) -> None:
        with native_logs_silenced():
            self._mesh.close()


FAN_WEIGHTS = ("3DFAN4", "depth", "s3fd")  # torch hub checkpoint name prefixes used by face-alignment 1.4


class FanDetector:
    """face-alignment's 3D FAN (Bulat & Tzimiropoulos 2017); its 68 3D points double as the mesh.
    It detects every frame independently, so `video` changes nothing."""

    name = "fan"

    def __init__(self, video: bool = True):
        try:
            import face_alignment
            import torch
        except ImportError:
            raise EmodiffError("The 'fan' landmark backend needs the face-alignment package "
                               "(pip install 'emodiff[fan]'); use --landmarks mediapipe otherwise.") from None
        checkpoints = Path(torch.hub.get_dir()) / "checkpoints"
        missing = [name for name in FAN_WEIGHTS if not any(checkpoints.glob(f"{name}-*"))]
        if missing:
            raise EmodiffError(f"The 'fan' landmark backend needs the face-alignment weights {', '.join(missing)} in "
                               f"{checkpoints}; run face-alignment once on a connected machine to download them.")
        self.version = face_alignment.__version__
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self._fa = face_alignment.FaceAlignment(face_alignment.LandmarksType.THREE_D, device=device)

    def detect(self, image_rgb: np.ndarray) -> list[Face]:
        points = self._fa.get_landmarks_from_image(image_rgb) or []
        return [Face(p[:, :2].astype(np.float32), p.astype(np.float32)) for p in points]

    def close(self) -> None:
        pass


LANDMARK_DETECTORS: dict[str, Callable[..., LandmarkDetector]] = {
    "mediapipe": MediaPipeDetector,
    "fan": FanDetector,
}


def make_detector(name: str, video: bool = True) -> LandmarkDetector:
    if name not in LANDMARK_DETECTORS:
        raise EmodiffError(f"Unknown landmark backend '{name}'; choose one of: {', '.join(LANDMARK_DETECTORS)}.")
    return LANDMARK_DETECTORS[name](video=video)


def largest_face(faces: list[Face]) -> Face | None:
    """The largest of the detected faces (None when there is none)."""
    return max(faces, key=lambda f: f.area, default=None)
