"""Visual checks of a DECA fit on its 224² crop, saved as PNG.

`mesh_overlay` shades the FLAME mesh through pytorch3d's rasteriser (optional dependency);
`landmark_overlay` needs only numpy: the projected FLAME landmarks (red) over the input ones
(green). Neither is needed for extraction.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import matplotlib.image
import numpy as np
import torch

from third_party.deca.assets import write_atomic
from third_party.deca.flame import orthographic_project

PREDICTED_COLOUR = (230, 40, 40)
INPUT_COLOUR = (40, 200, 60)
DEPTH_OFFSET = 10.0  # keeps every projected vertex in front of pytorch3d's near plane


def has_pytorch3d() -> bool:
    return importlib.util.find_spec("pytorch3d") is not None


def _to_pixels(points: np.ndarray, size: int) -> np.ndarray:
    """Crop-normalised (u, v) in [−1, 1] → integer pixel (column, row)."""
    return np.round((np.asarray(points, np.float64) + 1) * size / 2).astype(np.int64)


def _draw_dots(image: np.ndarray, pixels: np.ndarray, colour: tuple[int, int, int], radius: int) -> None:
    size_y, size_x = image.shape[:2]
    offsets = [(dx, dy) for dx in range(-radius, radius + 1) for dy in range(-radius, radius + 1)
               if dx * dx + dy * dy <= radius * radius]
    for dx, dy in offsets:
        xs, ys = pixels[:, 0] + dx, pixels[:, 1] + dy
        inside = (xs >= 0) & (xs < size_x) & (ys >= 0) & (ys < size_y)
        image[ys[inside], xs[inside]] = colour


def landmark_overlay(crop: np.ndarray, predicted: np.ndarray, target: np.ndarray | None = None,
                     radius: int = 2) -> np.ndarray:
    """crop uint8 (S, S, 3); predicted / target (68, 2) crop-normalised → a copy with dots drawn."""
    image = np.array(crop, dtype=np.uint8, copy=True)
    if target is not None:
        _draw_dots(image, _to_pixels(target, image.shape[1]), INPUT_COLOUR, radius)
    _draw_dots(image, _to_pixels(predicted, image.shape[1]), PREDICTED_COLOUR, radius)
    return image


def mesh_overlay(crop: np.ndarray, vertices: torch.Tensor, faces: torch.Tensor, camera: torch.Tensor,
                 opacity: float = 0.6) -> np.ndarray:
    """Flat-shaded FLAME mesh (vertices (V, 3), faces (F, 3)) seen through DECA's camera (s, tx, ty)
    over crop uint8 (S, S, 3). Requires pytorch3d."""
    from pytorch3d.renderer.mesh import rasterize_meshes
    from pytorch3d.structures import Meshes

    size = crop.shape[0]
    uv = orthographic_project(vertices[None], camera[None])[0]
    depth = -camera[0] * vertices[:, 2] + DEPTH_OFFSET  # FLAME looks along +z: larger z is nearer
    screen = torch.cat([-uv, depth[:, None]], 1)  # pytorch3d's NDC: +x left, +y up
    pix_to_face, _, _, _ = rasterize_meshes(Meshes(verts=[screen.float()], faces=[faces.long()]),
                                            image_size=size, blur_radius=0.0, faces_per_pixel=1)
    corners = vertices[faces.long()]
    normals = torch.linalg.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    shade = (normals[:, 2].abs() / normals.norm(dim=1).clamp(min=1e-12)).cpu().numpy()
    face_index = pix_to_face[0, ..., 0].cpu().numpy()
    covered = face_index >= 0
    image = crop.astype(np.float32)
    grey = 40 + 200 * shade[face_index[covered]]
    image[covered] = (1 - opacity) * image[covered] + opacity * grey[:, None]
    return image.round().clip(0, 255).astype(np.uint8)


def save_png(path: str | os.PathLike, image: np.ndarray) -> Path:
    """Write uint8 (H, W, 3) as PNG, atomically."""
    path = Path(path)
    write_atomic(path, lambda file: matplotlib.image.imsave(file, image, format="png"))
    return path
