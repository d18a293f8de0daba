"""Face alignment: square crops centred on the nose tip (EMOdiffhead §4.1, docs/design.md §4.3).

A crop box is (cx, cy, side) in source pixels: centred on the nose tip (iBUG point 30), with a
side of `CROP_SCALE` × the face extent (the larger side of the 68 points' bounding box). Over a
video both are smoothed with a centred moving average (edges padded by repetition) — the centre
over `CENTER_WINDOW` frames, the side over `SIDE_WINDOW` frames — so the crop follows the head
without jitter. Crops outside the image are padded by edge replication.
"""

from __future__ import annotations

import cv2
import numpy as np

from emodiff.data.landmarks import NOSE_TIP, make_detector
from emodiff.errors import EmodiffError

CROP_SCALE = 1.8
CENTER_WINDOW = 5
SIDE_WINDOW = 25


def face_box(points68: np.ndarray) -> np.ndarray:
    """(..., 68, 2) points -> (..., 3) unsmoothed boxes (cx, cy, side)."""
    extent = (points68.max(axis=-2) - points68.min(axis=-2)).max(axis=-1)
    return np.concatenate([points68[..., NOSE_TIP, :], CROP_SCALE * extent[..., None]], axis=-1)


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average along axis 0, edges padded by repeating the end values."""
    half = window // 2
    if half == 0 or len(values) < 2:
        return values.copy()
    padded = np.concatenate([np.repeat(values[:1], half, 0), values, np.repeat(values[-1:], half, 0)])
    cumsum = np.cumsum(np.concatenate([np.zeros_like(values[:1]), padded]), axis=0, dtype=np.float64)
    return ((cumsum[2 * half + 1:] - cumsum[:-2 * half - 1]) / (2 * half + 1)).astype(values.dtype)


def smooth_boxes(points68: np.ndarray) -> np.ndarray:
    """(T, 68, 2) points of one video -> (T, 3) temporally smoothed crop boxes."""
    boxes = face_box(points68)
    return np.concatenate([moving_average(boxes[:, :2], CENTER_WINDOW),
                           moving_average(boxes[:, 2:], SIDE_WINDOW)], axis=1)


def _integer_box(box: np.ndarray) -> tuple[int, int, int]:
    side = max(int(round(float(box[2]))), 2)
    return int(round(float(box[0]) - side / 2)), int(round(float(box[1]) - side / 2)), side


def crop(image: np.ndarray, box: np.ndarray, size: int) -> np.ndarray:
    """Cut the square `box` out of `image` (replicating edges beyond it) and resize it to size×size."""
    x0, y0, side = _integer_box(box)
    height, width = image.shape[:2]
    pad = max(0, -x0, -y0, x0 + side - width, y0 + side - height)
    if pad:
        image = cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
    patch = image[y0 + pad:y0 + pad + side, x0 + pad:x0 + pad + side]
    interpolation = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
    return cv2.resize(patch, (size, size), interpolation=interpolation)


def to_crop_coords(points: np.ndarray, box: np.ndarray, size: int) -> np.ndarray:
    """Map (..., 2) source-pixel points into the pixel coordinates of the crop made by `crop`."""
    x0, y0, side = _integer_box(box)
    return (points - np.array([x0, y0], dtype=np.float32)) * (size / side)


def align_image(image_rgb: np.ndarray, size: int = 128, landmarks: str = "mediapipe") -> np.ndarray:
    """Aligned size×size crop of the one face in an identity image (same crop rule as prepare)."""
    detector = make_detector(landmarks, video=False)
    try:
        faces = detector.detect(image_rgb)
    finally:
        detector.close()
    if len(faces) != 1:
        found = "none" if not faces else str(len(faces))
        raise EmodiffError(f"The identity image must show exactly one face, but {found} were found in it.")
    return crop(image_rgb, face_box(faces[0].points68), size)
