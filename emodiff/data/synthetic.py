"""The synthetic world: render procedural talking faces whose truth is known into a clip store (docs/design.md §11).

`SyntheticWorld` renders cartoon faces (identity × expression in the eight-parameter space `EXPRESSION_PARAMS`)
with vectorised numpy, and speech-like audio whose envelope opens the mouth and whose loudness and pitch follow the
intensity; a clip's expression is e(t) = k(t) · d_emotion + mouth_open(t) · u_mouth + small noise, EMOdiffhead's
eq. 14 with e_n = 0. `make_store` writes MEAD-like clips straight into a clip store, with `expression.npy` the
emotional part only (mouth column 0, as FLAME keeps the jaw out of ψ) and the true mouth in `mouth_open.npy`.
`emodiff synthesize --help` (emodiff/cli/synthesize.py) describes the world in full.

Coordinates: the face is modelled in normalised units with y pointing down (head about 1.1 wide
and 1.5 tall, nose near the origin). The crop is a square camera window of half-width 1 / CROP_ZOOM
centred at (0, CROP_CENTRE_Y), so pixel (row r, column c) of an S×S image has its centre at
x = ((c + 0.5)·2/S − 1) / CROP_ZOOM. Landmarks are stored in crop pixels with pixel centres at
integer coordinates (x_px = c, y_px = r).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Sequence

import numpy as np
from scipy.ndimage import uniform_filter1d
from tqdm.auto import tqdm

from emodiff.data.audio_features import extract_audio_features
from emodiff.data.labels import EMOTIONS, NEUTRAL, emotion_index
from emodiff.data.media import SAMPLE_RATE, VideoWriter
from emodiff.data.store import ClipStore, write_wav
from emodiff.files import atomic_path, save_npy_atomic, write_json_atomic
from emodiff.errors import EmodiffError

EXPRESSION_PARAMS: tuple[str, ...] = (
    "mouth_open", "smile", "frown", "brow_raise", "brow_furrow", "eye_open", "lip_press", "cheek_raise",
)
MOUTH_OPEN = 0
EXPRESSION_DIM = 50  # stored expression vectors: the 8 true parameters, then zeros (store contract D = 50)
LEVEL_INTENSITY = {1: 0.35, 2: 0.65, 3: 0.9}  # MEAD level → base intensity k
SIZE_RANGE = (16, 512)
WORLD_FILE = "synthetic_world.json"  # the world description in a store's stats/ (and in pipelines assembled from it)
UNSEEN_IDENTITY = 1000  # identity indices from here on are beyond any store `make_store` writes by default
RENDER_TAG = "emodiff-synthetic-render"  # PNG text chunk of `save_render`: the world seed, size and identity
CROP_ZOOM, CROP_CENTRE_Y = 1.25, 0.1  # a tight, aligned face crop

# Emotion directions before normalisation (FACS-like: happy = smile + cheek raise, surprise = brows
# up + eyes wide, ...). None uses mouth_open, which belongs to speech.
_EMOTION_COMPONENTS: dict[str, dict[str, float]] = {
    "neutral": {},
    "angry": {"brow_furrow": 1.0, "lip_press": 0.8, "eye_open": -0.3, "frown": 0.3},
    "contempt": {"smile": 0.5, "lip_press": 0.7, "eye_open": -0.5, "brow_raise": 0.2},
    "disgusted": {"frown": 0.6, "brow_furrow": 0.6, "cheek_raise": 0.8, "eye_open": -0.4},
    "fear": {"brow_raise": 0.5, "brow_furrow": 0.8, "eye_open": 0.8, "frown": 0.5},
    "happy": {"smile": 1.0, "cheek_raise": 0.8, "eye_open": -0.2},
    "sad": {"frown": 1.0, "brow_raise": 0.4, "brow_furrow": 0.5, "eye_open": -0.5},
    "surprised": {"brow_raise": 1.0, "eye_open": 1.0},
}


def _direction_table() -> np.ndarray:
    table = np.zeros((len(EMOTIONS), len(EXPRESSION_PARAMS)))
    for e, name in enumerate(EMOTIONS):
        for param, value in _EMOTION_COMPONENTS[name].items():
            table[e, EXPRESSION_PARAMS.index(param)] = value
        norm = np.linalg.norm(table[e])
        if norm > 0:
            table[e] /= norm
    return table


EMOTION_DIRECTIONS = _direction_table()  # (8 emotions, 8 params), unit rows, neutral row = 0

_SKIN_LIGHT = np.array([0.96, 0.82, 0.70])
_SKIN_DARK = np.array([0.40, 0.26, 0.17])
_HAIR_COLOURS = np.array([[0.08, 0.06, 0.05], [0.30, 0.18, 0.10], [0.55, 0.38, 0.20],
                          [0.85, 0.70, 0.45], [0.60, 0.25, 0.10], [0.62, 0.62, 0.62]])
_IRIS_COLOURS = np.array([[0.35, 0.20, 0.10], [0.20, 0.40, 0.70], [0.25, 0.50, 0.30], [0.10, 0.08, 0.06]])
_LIP_RED = np.array([0.75, 0.25, 0.30])
_SCLERA = np.array([0.96, 0.94, 0.91])
_LASH = np.array([0.10, 0.07, 0.06])
_MOUTH_INSIDE = np.array([0.28, 0.07, 0.08])
_TEETH = np.array([0.97, 0.96, 0.92])
_BLUSH = np.array([0.88, 0.36, 0.38])

_IDENTITY_STREAM, _CLIP_STREAM = 1, 2  # independent random streams of one world seed


@dataclass(frozen=True)
class Identity:
    """One synthetic person: geometry in normalised units (y down), colours as RGB in [0, 1]."""

    index: int
    face_cy: float
    face_rx: float
    face_ry: float
    skin: tuple[float, float, float]
    hair: tuple[float, float, float]
    hair_volume: float
    hairline_y: float
    hair_bottom_y: float
    hair_wave: tuple[float, float, float]  # amplitude, frequency, phase of the fringe edge
    background_top: tuple[float, float, float]
    background_bottom: tuple[float, float, float]
    clothes: tuple[float, float, float]
    eye_dx: float
    eye_y: float
    eye_rx: float
    eye_ry: float
    iris: tuple[float, float, float]
    brow_gap: float
    brow_thickness: float
    brow_length: float
    nose_tip_y: float
    nose_width: float
    mouth_y: float
    mouth_width: float
    lip_thickness: float
    lip: tuple[float, float, float]


def _sample_identity(rng: np.random.Generator, index: int) -> Identity:
    u = rng.uniform

    def colour(c: np.ndarray, jitter: float = 0.03) -> tuple[float, float, float]:
        return tuple(float(v) for v in np.clip(c + rng.normal(0, jitter, 3), 0, 1))

    skin = np.array(colour(_SKIN_LIGHT + (_SKIN_DARK - _SKIN_LIGHT) * u(), 0.02))
    hair = np.array(colour(_HAIR_COLOURS[rng.integers(len(_HAIR_COLOURS))]))
    face_cy, face_rx, face_ry = u(0.02, 0.08), u(0.50, 0.60), u(0.68, 0.78)
    eye_y = face_cy + u(-0.06, 0.0)
    eye_rx = u(0.11, 0.135)
    nose_tip_y = eye_y + u(0.22, 0.27)
    return Identity(
        index=index, face_cy=face_cy, face_rx=face_rx, face_ry=face_ry,
        skin=tuple(skin), hair=tuple(hair),
        hair_volume=u(0.05, 0.16), hairline_y=face_cy - face_ry * u(0.52, 0.72),
        hair_bottom_y=face_cy + u(-0.1, 0.7), hair_wave=(u(0.0, 0.03), u(4.0, 12.0), u(0.0, 2 * np.pi)),
        background_top=colour(rng.uniform(0.15, 0.85, 3), 0), background_bottom=colour(rng.uniform(0.15, 0.85, 3), 0),
        clothes=colour(rng.uniform(0.1, 0.9, 3), 0),
        eye_dx=u(0.21, 0.26), eye_y=eye_y, eye_rx=eye_rx, eye_ry=u(0.05, 0.065),
        iris=colour(_IRIS_COLOURS[rng.integers(len(_IRIS_COLOURS))]),
        brow_gap=u(0.10, 0.13), brow_thickness=u(0.022, 0.036), brow_length=eye_rx * u(1.1, 1.3),
        nose_tip_y=nose_tip_y, nose_width=u(0.05, 0.07),
        mouth_y=nose_tip_y + u(0.11, 0.14), mouth_width=u(0.16, 0.20), lip_thickness=u(0.03, 0.042),
        lip=tuple(0.55 * skin + 0.45 * _LIP_RED),
    )


@dataclass
class _Face:
    """Per-frame geometry of the moving parts, each array (T,) in normalised units."""

    mouth_halfwidth: np.ndarray
    mouth_curve: np.ndarray       # corner lift (positive = corners up)
    open_up: np.ndarray           # inner upper lip above the mouth line
    open_low: np.ndarray          # inner lower lip below the mouth line (jaw drop)
    lip_up: np.ndarray
    lip_low: np.ndarray
    brow_base: np.ndarray
    brow_arch: np.ndarray
    brow_inner_drop: np.ndarray
    brow_dx: np.ndarray
    lid_up: np.ndarray            # eye half-heights above / below the eye line
    lid_low: np.ndarray
    furrow: np.ndarray            # opacities in [0, 1]
    chin_crease: np.ndarray
    blush: np.ndarray
    cheek_y: np.ndarray

    def expand(self, ndim: int) -> "_Face":
        """The same geometry with every array shaped (T, 1, …, 1) to broadcast over `ndim` axes."""
        return _Face(**{f.name: getattr(self, f.name).reshape(-1, *([1] * ndim)) for f in fields(self)})


def _face_geometry(idn: Identity, expression: np.ndarray) -> _Face:
    """Map the 8 expression parameters (T, 8) to the geometry of mouth, brows, eyes and cheeks."""
    mo = np.clip(expression[:, 0], 0.0, None)
    sm, fr, br, bf, eo, lp, cr = expression[:, 1:].T
    thin = np.clip(1.0 - 0.75 * lp - 0.15 * sm, 0.15, None)
    return _Face(
        mouth_halfwidth=idn.mouth_width * np.clip(1.0 + 0.22 * sm - 0.25 * lp - 0.12 * fr - 0.08 * mo, 0.5, None),
        mouth_curve=0.09 * (sm - fr),
        open_up=0.035 * mo,
        open_low=0.11 * mo,
        lip_up=idn.lip_thickness * 0.85 * thin,
        lip_low=idn.lip_thickness * 1.15 * thin * np.clip(1.0 + 0.5 * fr, 0.5, None),  # a frown pouts
        brow_base=idn.eye_y - idn.brow_gap - 0.08 * br + 0.02 * bf,
        brow_arch=np.clip(0.02 + 0.015 * br, 0.0, None),
        brow_inner_drop=0.06 * bf - 0.02 * br,
        brow_dx=idn.eye_dx - 0.025 * bf,
        lid_up=idn.eye_ry * np.clip((1.0 + 0.7 * eo) * (1.0 - 0.15 * cr), 0.05, None),
        lid_low=idn.eye_ry * 0.8 * np.clip(1.0 + 0.4 * eo - 0.5 * cr, 0.05, None),
        furrow=np.clip(bf, 0.0, 1.0),
        chin_crease=np.clip(fr, 0.0, 1.0),
        blush=np.clip(cr, 0.0, 1.0),
        cheek_y=idn.mouth_y - 0.13 - 0.04 * cr,
    )


def _mouth_curves(idn: Identity, g: _Face, s: np.ndarray) -> tuple[np.ndarray, ...]:
    """y of the outer-upper, inner-upper, inner-lower, outer-lower lip at relative positions s ∈ [-1, 1]
    (corners at ±1); `g` is expanded to broadcast against s."""
    mid = idn.mouth_y - g.mouth_curve * s ** 2
    profile = 1.0 - s ** 2
    inner_up = mid - g.open_up * profile
    inner_low = mid + g.open_low * profile
    return inner_up - g.lip_up * profile, inner_up, inner_low, inner_low + g.lip_low * profile


def _brow_y(g: _Face, t: np.ndarray) -> np.ndarray:
    """Brow centre line at t ∈ [-1 inner end, 1 outer end]; `g` is expanded to broadcast against t."""
    return g.brow_base - g.brow_arch * (1.0 - t ** 2) + g.brow_inner_drop * (1.0 - t) / 2


def _landmarks_normalised(idn: Identity, g: _Face) -> np.ndarray:
    """The 68 iBUG points (T, 68, 2) in normalised units, read off the same curves the renderer draws."""
    pts = np.zeros((len(g.mouth_curve), 68, 2))
    g1 = g.expand(1)
    # jaw 0–16: the lower face ellipse from the image-left ear, round the chin (8), to the right
    phi = np.linspace(np.pi + 0.1, -0.1, 17)
    pts[:, 0:17, 0] = idn.face_rx * np.cos(phi)
    pts[:, 0:17, 1] = idn.face_cy + idn.face_ry * np.sin(phi)
    # brows 17–21 (image left, outer → inner) and 22–26 (image right, inner → outer)
    t = np.linspace(1.0, -1.0, 5)
    for first, side, ts in ((17, -1.0, t), (22, 1.0, t[::-1])):
        pts[:, first:first + 5, 0] = side * (g1.brow_dx + idn.brow_length * ts)
        pts[:, first:first + 5, 1] = _brow_y(g1, ts)
    # nose bridge 27–30 and base 31–35
    pts[:, 27:31, 1] = np.linspace(idn.eye_y, idn.nose_tip_y, 4)
    pts[:, 31:36, 0] = np.linspace(-idn.nose_width, idn.nose_width, 5)
    pts[:, 31:36, 1] = idn.nose_tip_y + np.array([0.01, 0.02, 0.025, 0.02, 0.01])
    # eyes 36–41 (image left: outer corner, upper lid ×2, inner corner, lower lid ×2) and 42–47
    s_eye = np.array([-1.0, -0.4, 0.4, 1.0, 0.4, -0.4])
    upper = np.array([True, True, True, True, False, False])
    for first, side in ((36, -1.0), (42, 1.0)):
        cx = side * idn.eye_dx
        lid = np.where(upper, -g1.lid_up, g1.lid_low) * (1.0 - s_eye ** 2)
        pts[:, first:first + 6, 0] = cx + idn.eye_rx * s_eye
        pts[:, first:first + 6, 1] = idn.eye_y + lid
    # mouth outer 48–59 (left corner, upper lip left → right, right corner, lower lip right → left)
    # and inner 60–67 (left corner, upper inner, right corner, lower inner)
    s_out = np.array([-1, -2 / 3, -1 / 3, 0, 1 / 3, 2 / 3, 1, 2 / 3, 1 / 3, 0, -1 / 3, -2 / 3])
    s_in = np.array([-0.9, -0.5, 0, 0.5, 0.9, 0.5, 0, -0.5])
    outer_up, _, _, outer_low = _mouth_curves(idn, g1, s_out)
    pts[:, 48:60, 0] = g1.mouth_halfwidth * s_out
    pts[:, 48:60, 1] = np.where(np.arange(12) <= 6, outer_up, outer_low)
    _, inner_up, inner_low, _ = _mouth_curves(idn, g1, s_in)
    pts[:, 60:68, 0] = g1.mouth_halfwidth * s_in
    pts[:, 60:68, 1] = np.where(np.arange(8) <= 4, inner_up, inner_low)
    return pts


def _as_expression(expression: np.ndarray, dtype: type) -> np.ndarray:
    """Expressions as a (T, 8) array of `dtype`; a single (8,) vector becomes T = 1."""
    expr = np.atleast_2d(np.asarray(expression, dtype=dtype))
    if expr.ndim != 2 or expr.shape[1] != len(EXPRESSION_PARAMS):
        raise ValueError(f"expression must have shape (T, {len(EXPRESSION_PARAMS)}), got {expr.shape}")
    return expr


def _coverage(distance_px: np.ndarray) -> np.ndarray:
    """Anti-aliased coverage of a shape from its signed distance in pixels (negative inside)."""
    return np.clip(0.5 - distance_px, 0.0, 1.0)


def _ellipse_distance(x: np.ndarray, y: np.ndarray, cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
    """Approximate signed distance to an ellipse (|p/r| (|p/r| − 1) / |p/r²|), in the units of x, y."""
    px, py = (x - cx) / rx, (y - cy) / ry
    k0 = np.sqrt(px * px + py * py)
    k1 = np.sqrt((px / rx) ** 2 + (py / ry) ** 2)
    return k0 * (k0 - 1.0) / np.maximum(k1, 1e-9)


def _paint(image: np.ndarray, alpha: np.ndarray, colour) -> None:
    """Alpha-composite a flat colour over `image` (..., 3) in place."""
    image += alpha[..., None] * (np.asarray(colour, dtype=image.dtype) - image)


class SyntheticWorld:
    """Procedural talking faces, audio and labels, deterministic for a seed (docs/design.md §11).

    `size` is the rendered square size in pixels (32–256 intended; 16–512 accepted) and `fps`
    the video frame rate that audio and expression tracks are aligned to.
    """

    def __init__(self, seed: int = 0, size: int = 64, fps: int = 25):
        if not SIZE_RANGE[0] <= size <= SIZE_RANGE[1]:
            raise EmodiffError(f"Synthetic frame size must be between {SIZE_RANGE[0]} and {SIZE_RANGE[1]} pixels, got {size}.")
        if fps <= 0:
            raise EmodiffError(f"Frame rate must be positive, got {fps}.")
        self.seed, self.size, self.fps = int(seed), int(size), int(fps)
        self._half = size / 2.0 * CROP_ZOOM  # pixels per normalised unit
        crop = ((np.arange(size, dtype=np.float32) + 0.5) * 2.0 / size - 1.0) / CROP_ZOOM
        self._xaxis, self._yaxis = crop, crop + np.float32(CROP_CENTRE_Y)

    # -- identities and expressions ---------------------------------------------------------
    def identity(self, index: int) -> Identity:
        """The identity number `index` (≥ 0) of this world; the same for every size and fps."""
        if index < 0:
            raise ValueError(f"identity index must be non-negative, got {index}")
        return _sample_identity(np.random.default_rng([self.seed, _IDENTITY_STREAM, index]), index)

    @staticmethod
    def emotion_direction(emotion: str | int) -> np.ndarray:
        """Unit direction d_emotion (8,) of an emotion name or index; neutral is the zero vector."""
        idx = emotion_index(emotion) if isinstance(emotion, str) else int(emotion)
        return EMOTION_DIRECTIONS[idx].copy()

    # -- geometry ---------------------------------------------------------------------------
    def landmarks(self, identity: Identity, expression: np.ndarray) -> np.ndarray:
        """True iBUG-68 landmarks (T, 68, 2) in crop pixels for expressions (T, 8)."""
        g = _face_geometry(identity, _as_expression(expression, np.float64))
        pts = _landmarks_normalised(identity, g) - np.array([0.0, CROP_CENTRE_Y])
        return (pts * self._half + (self.size / 2.0 - 0.5)).astype(np.float32)

    def _box(self, x0: float, x1: float, y0: float, y1: float) -> tuple[slice, slice, np.ndarray, np.ndarray]:
        """Pixel slices covering a normalised box, and the grid coordinates inside it."""
        def span(a: float, b: float, centre: float) -> slice:
            lo = int(np.clip(np.floor((a - centre) * self._half + self.size / 2.0) - 1, 0, self.size))
            hi = int(np.clip(np.ceil((b - centre) * self._half + self.size / 2.0) + 1, 0, self.size))
            return slice(lo, max(hi, lo))
        rows, cols = span(y0, y1, CROP_CENTRE_Y), span(x0, x1, 0.0)
        return rows, cols, self._xaxis[cols][None, None, :], self._yaxis[rows][None, :, None]

    # -- rendering --------------------------------------------------------------------------
    def _static_layers(self, idn: Identity) -> np.ndarray:
        """Everything that does not move: background, hair, neck, clothes, ears, face, nose (S, S, 3)."""
        h = self._half
        x, y = self._xaxis[None, :], self._yaxis[:, None]
        bottom, top = np.asarray(idn.background_bottom), np.asarray(idn.background_top)
        image = (top + (bottom - top) * np.linspace(0.0, 1.0, self.size)[:, None, None]) * np.ones((1, self.size, 1))
        image = image.astype(np.float32)
        skin, hair = np.asarray(idn.skin), np.asarray(idn.hair)
        vol = idn.hair_volume
        back_hair = np.maximum(_ellipse_distance(x, y, 0.0, idn.face_cy - vol / 2, idn.face_rx + vol, idn.face_ry + vol),
                               y - idn.hair_bottom_y)
        _paint(image, _coverage(back_hair * h), hair)
        _paint(image, _coverage(_ellipse_distance(x, y, 0.0, 1.3, 0.95, 0.5) * h), idn.clothes)
        neck = np.maximum(np.abs(x) - 0.2, idn.face_cy + 0.4 - y)
        _paint(image, _coverage(neck * h), skin * 0.82)
        for side in (-1.0, 1.0):
            ear = _ellipse_distance(x, y, side * idn.face_rx, idn.eye_y + 0.08, 0.06, 0.11)
            _paint(image, _coverage(ear * h), skin * 0.92)
        face = _ellipse_distance(x, y, 0.0, idn.face_cy, idn.face_rx, idn.face_ry)
        shade = 1.0 - 0.12 * ((x / idn.face_rx) ** 2 + ((y - idn.face_cy) / idn.face_ry) ** 2)
        _paint(image, _coverage(face * h), skin * shade[..., None])
        amp, freq, phase = idn.hair_wave
        edge = idn.hairline_y + amp * np.sin(freq * x + phase) + 0.25 * x ** 2
        fringe = np.maximum(_ellipse_distance(x, y, 0.0, idn.face_cy, idn.face_rx + 0.01, idn.face_ry + 0.01), y - edge)
        _paint(image, _coverage(fringe * h), hair)
        tip = _ellipse_distance(x, y, 0.0, idn.nose_tip_y - 0.02, idn.nose_width, 0.045)
        _paint(image, 0.35 * _coverage(tip * h), skin * 0.85)
        for side in (-1.0, 1.0):
            nostril = _ellipse_distance(x, y, side * idn.nose_width * 0.5, idn.nose_tip_y + 0.005, 0.018, 0.011)
            _paint(image, _coverage(nostril * h), skin * 0.5)
        return image

    def portrait(self, index: int) -> np.ndarray:
        """The neutral face (S, S, 3) uint8 of identity `index`: the identity image a video of this person starts from."""
        return self.render(self.identity(index), np.zeros((1, len(EXPRESSION_PARAMS))))[0]

    def render(self, identity: Identity, expression: np.ndarray) -> np.ndarray:
        """Frames (T, S, S, 3) uint8 of `identity` showing each expression of (T, 8)."""
        expr = _as_expression(expression, np.float32)
        idn, h = identity, self._half
        g = _face_geometry(idn, expr)
        pts = _landmarks_normalised(idn, g)
        g2 = g.expand(2)
        frames = np.repeat(self._static_layers(idn)[None], len(expr), axis=0)
        skin = np.asarray(idn.skin)

        # cheeks: soft blush that rises with cheek_raise
        rows, cols, x, y = self._box(-0.6, 0.6, float(g.cheek_y.min()) - 0.15, float(g.cheek_y.max()) + 0.15)
        for side in (-1.0, 1.0):
            r2 = (x - side * (idn.eye_dx + 0.02)) ** 2 + (y - g2.cheek_y) ** 2
            _paint(frames[:, rows, cols], 0.55 * g2.blush * np.exp(-r2 / (2 * 0.055 ** 2)), _BLUSH)

        # brows, and the vertical furrow lines between them
        margin = idn.brow_thickness + 0.02
        bx, by = pts[:, 17:27, 0], pts[:, 17:27, 1]
        rows, cols, x, y = self._box(float(bx.min()) - margin, float(bx.max()) + margin,
                                     float(by.min()) - margin - 0.05, float(by.max()) + margin)
        for side in (-1.0, 1.0):
            t = (side * x - g2.brow_dx) / idn.brow_length
            half_thick = idn.brow_thickness / 2 * (1.0 - 0.35 * (t + 1.0) / 2)
            d = np.maximum(np.abs(y - _brow_y(g2, t)) - half_thick, (np.abs(t) - 1.0) * idn.brow_length)
            _paint(frames[:, rows, cols], _coverage(d * h), np.asarray(idn.hair) * 0.7)
        top = idn.eye_y - idn.brow_gap + 0.01
        rows, cols, x, y = self._box(-0.06, 0.06, top - 0.05, top + 0.05)
        d = np.maximum(np.abs(np.abs(x) - 0.025) - 0.005, np.abs(y - top) - 0.035)
        _paint(frames[:, rows, cols], 0.7 * g2.furrow * _coverage(d * h), skin * 0.6)

        # eyes: sclera between parabolic lids, iris and pupil, dark upper lid line
        for side in (-1.0, 1.0):
            cx = side * idn.eye_dx
            rows, cols, x, y = self._box(cx - idn.eye_rx - 0.02, cx + idn.eye_rx + 0.02,
                                         idn.eye_y - float(g.lid_up.max()) - 0.02, idn.eye_y + float(g.lid_low.max()) + 0.02)
            s = (x - cx) / idn.eye_rx
            profile = 1.0 - s ** 2
            upper = idn.eye_y - g2.lid_up * profile
            beyond = (np.abs(s) - 1.0) * idn.eye_rx
            eye = _coverage(np.maximum(np.maximum(upper - y, y - (idn.eye_y + g2.lid_low * profile)), beyond) * h)
            region = frames[:, rows, cols]
            _paint(region, eye, _SCLERA)
            r = np.sqrt((x - cx) ** 2 + (y - idn.eye_y) ** 2)
            _paint(region, eye * _coverage((r - idn.eye_ry * 0.95) * h), idn.iris)
            _paint(region, eye * _coverage((r - idn.eye_ry * 0.42) * h), _LASH)
            _paint(region, _coverage(np.maximum(np.abs(y - upper) - 0.008, beyond) * h), _LASH)

        # mouth: lips, dark inside, upper teeth
        mx, my = pts[:, 48:68, 0], pts[:, 48:68, 1]
        rows, cols, x, y = self._box(float(mx.min()) - 0.02, float(mx.max()) + 0.02, float(my.min()) - 0.02, float(my.max()) + 0.02)
        s = x / g2.mouth_halfwidth
        outer_up, inner_up, inner_low, outer_low = _mouth_curves(idn, g2, s)
        beyond = (np.abs(s) - 1.0) * g2.mouth_halfwidth
        region = frames[:, rows, cols]
        _paint(region, _coverage(np.maximum(np.maximum(outer_up - y, y - outer_low), beyond) * h), idn.lip)
        inside = np.maximum(np.maximum(inner_up - y, y - inner_low), beyond + 0.004)
        _paint(region, _coverage(inside * h), _MOUTH_INSIDE)
        teeth = np.maximum(inside, y - inner_up - 0.022 * (1.0 - s ** 2))
        parted = np.clip((g2.open_up + g2.open_low) * h - 0.5, 0.0, 1.0)  # no teeth on a closed lip line
        _paint(region, parted * _coverage(teeth * h), _TEETH)

        # chin crease under the lower lip (frown)
        crease_y = idn.mouth_y + g.open_low + g.lip_low + 0.035  # (T,), below the lower lip's centre
        rows, cols, x, y = self._box(-0.08, 0.08, float(crease_y.min()) - 0.02, float(crease_y.max()) + 0.02)
        d = np.maximum(np.abs(y - crease_y.reshape(-1, 1, 1)) - 0.006, np.abs(x) - 0.06)
        _paint(frames[:, rows, cols], 0.6 * g2.chin_crease * _coverage(d * h), skin * 0.65)
        return (np.clip(frames, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)

    # -- audio and intensity ----------------------------------------------------------------
    def speech(self, n_frames: int, intensity: float | np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Speech-like audio (16 kHz mono float32) and the mouth opening (T,) in [0, 1] it implies.

        Voiced syllables (harmonics of f0 shaped by two formants, a noise burst at each onset) are
        separated by short gaps and occasional pauses. A syllable's openness raises its first formant
        and its loudness and scales how far the mouth opens; the mouth opening is the syllable
        envelope × openness at each frame centre. The frame-wise intensity k (scalar or (T,)) raises
        loudness (× (1 + 1.5k)) and pitch (× (1 + 0.5k)), so k can be predicted from the audio.
        """
        if n_frames < 1:
            raise EmodiffError(f"Speech needs at least one frame, got {n_frames}.")
        k = np.broadcast_to(np.asarray(intensity, dtype=np.float64), (n_frames,))
        if k.min() < 0.0 or k.max() > 1.0:
            raise EmodiffError(f"Intensity must lie in [0, 1], got values from {k.min():.3g} to {k.max():.3g}.")
        n = int(round(n_frames * SAMPLE_RATE / self.fps))
        t = np.arange(n) / SAMPLE_RATE
        envelope, openness, burst = np.zeros(n), np.zeros(n), np.zeros(n)
        formant1, formant2 = np.full(n, 500.0), np.full(n, 1500.0)
        start = rng.uniform(0.05, 0.3)
        while start < n / SAMPLE_RATE:
            length = rng.uniform(0.12, 0.26)
            a, b = int(start * SAMPLE_RATE), min(int((start + length) * SAMPLE_RATE), n)
            phase = (np.arange(a, b) - a) / (length * SAMPLE_RATE)
            vowel_open = rng.uniform(0.45, 1.0)
            envelope[a:b] = np.sin(np.pi * phase) ** 1.5
            openness[a:b] = vowel_open
            formant1[a:b] = 250.0 + 550.0 * vowel_open
            formant2[a:b] = rng.uniform(900.0, 2300.0)
            onset = np.arange(a, min(a + int(0.03 * SAMPLE_RATE), n))
            burst[onset] = rng.uniform(0.2, 0.6) * np.exp(-(onset - a) / (0.01 * SAMPLE_RATE))
            pause = rng.uniform(0.25, 0.6) if rng.uniform() < 0.15 else rng.uniform(0.02, 0.08)
            start += length + pause
        k_audio = np.interp(t, (np.arange(n_frames) + 0.5) / self.fps, k)
        f0 = rng.uniform(100.0, 190.0) * (1.0 + 0.5 * k_audio) * (1.0 + 0.04 * np.sin(2 * np.pi * 0.8 * t + rng.uniform(0, 2 * np.pi)))
        phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
        voiced, power = np.zeros(n), np.zeros(n)
        for harmonic in range(1, 41):
            f = harmonic * f0
            gain = (1.0 / (1.0 + ((f - formant1) / 90.0) ** 2) + 0.7 / (1.0 + ((f - formant2) / 120.0) ** 2)
                    + 0.05 / harmonic) * (f < 7000.0)
            voiced += gain * np.sin(harmonic * phase)
            power += 0.5 * gain ** 2
        voiced /= np.sqrt(np.maximum(power, 1e-12))
        loudness = 0.08 * (1.0 + 1.5 * k_audio) * (0.6 + 0.4 * openness)
        hiss = np.diff(rng.normal(size=n + 1))
        audio = loudness * (envelope * voiced + 0.5 * burst * hiss) + 0.002 * rng.normal(size=n)
        centres = np.minimum(((np.arange(n_frames) + 0.5) * SAMPLE_RATE / self.fps).astype(int), n - 1)
        mouth = (envelope * openness)[centres]
        return np.clip(audio, -1.0, 1.0).astype(np.float32), mouth.astype(np.float32)

    def intensity_curve(self, level: int, n_frames: int, rng: np.random.Generator) -> np.ndarray:
        """Frame-wise intensity k (T,) for a MEAD level: the level's base intensity reached after an
        onset of about 0.4 s, with slow fluctuation (three random sinusoids), clipped to [0, 1]."""
        if level not in LEVEL_INTENSITY:
            raise EmodiffError(f"Emotion level must be one of {sorted(LEVEL_INTENSITY)}, got {level}.")
        t = np.arange(n_frames) / self.fps
        onset = 1.0 - 0.6 * np.exp(-t / 0.4)
        wobble = sum(0.05 * np.sin(2 * np.pi * rng.uniform(0.15, 1.2) * t + rng.uniform(0, 2 * np.pi)) for _ in range(3))
        return np.clip(LEVEL_INTENSITY[level] * onset + wobble, 0.0, 1.0).astype(np.float32)

    def sample_clip(self, identity_index: int, emotion: str, level: int, n_frames: int,
                    rng: np.random.Generator) -> "SyntheticClip":
        """One talking clip: e(t) = k(t)·d_emotion + mouth_open(t) from the speech + smooth noise.

        Neutral clips have k = 0 (calm speech) whatever the level.
        """
        identity = self.identity(identity_index)
        direction = self.emotion_direction(emotion)
        emotional = emotion_index(emotion) != NEUTRAL
        k = self.intensity_curve(level, n_frames, rng) if emotional else np.zeros(n_frames, np.float32)
        audio, mouth = self.speech(n_frames, k, rng)
        noise = uniform_filter1d(rng.normal(0.0, 0.06, (n_frames, len(EXPRESSION_PARAMS))), size=5, axis=0)
        expression = k[:, None] * direction + noise
        expression[:, MOUTH_OPEN] = np.clip(mouth + noise[:, MOUTH_OPEN], 0.0, None)
        return SyntheticClip(
            identity=identity, emotion=EMOTIONS[emotion_index(emotion)], level=level,
            frames=self.render(identity, expression), audio=audio,
            expression=expression.astype(np.float32), intensity=k,
            landmarks=self.landmarks(identity, expression),
        )


@dataclass
class SyntheticClip:
    """A rendered clip with its truth: expression (T, 8), intensity k (T,), landmarks (T, 68, 2)."""

    identity: Identity
    emotion: str
    level: int
    frames: np.ndarray
    audio: np.ndarray
    expression: np.ndarray
    intensity: np.ndarray
    landmarks: np.ndarray


def _clip_plan(n_identities: int, clips_per_identity: int, emotions: Sequence[str],
               levels: Sequence[int]) -> list[tuple[int, int, str, int]]:
    """(identity, clip number, emotion, level) for every clip: a neutral clip first for each identity
    (when neutral is asked for), then the other (emotion, level) pairs in turn, continuing across
    identities so that every pair is covered."""
    names = [EMOTIONS[emotion_index(e)] for e in emotions]
    pairs = [(e, lv) for e in names if e != "neutral" for lv in levels]
    with_neutral = "neutral" in names
    plan, cursor = [], 0
    for i in range(n_identities):
        for j in range(clips_per_identity):
            if (with_neutral and j == 0) or not pairs:
                plan.append((i, j, "neutral", 1))
            else:
                plan.append((i, j, *pairs[cursor % len(pairs)]))
                cursor += 1
    return plan


def trained_world(checkpoint: str | Path) -> dict | None:
    """The description of the synthetic world a pipeline folder was trained in (its `synthetic_world.json`, which
    `emodiff assemble` copies from the store), or None for a pipeline trained on other data."""
    path = Path(checkpoint) / WORLD_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def unseen_identities(description: dict, count: int) -> list[int]:
    """`count` identity indices that a pipeline trained in the described world never saw: its held-out identities
    (such as "syn007") first, then indices from `UNSEEN_IDENTITY` on."""
    held_out = [int(name.removeprefix("syn")) for name in description.get("held_out_identities") or []]
    return (held_out + list(range(UNSEEN_IDENTITY, UNSEEN_IDENTITY + count)))[:count]


def save_render(path: str | Path, world: SyntheticWorld, index: int) -> Path:
    """Write identity `index`'s portrait as a PNG whose `RENDER_TAG` text records where it comes from (world seed,
    size, identity), so `render_origin` can tell this world's faces from photos; written atomically."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    path = Path(path)
    tag = PngInfo()
    tag.add_text(RENDER_TAG, json.dumps({"seed": world.seed, "size": world.size, "identity": int(index)}))
    with atomic_path(path) as tmp:
        Image.fromarray(world.portrait(index)).save(tmp, pnginfo=tag)
    return path


def render_origin(path: str | Path) -> dict | None:
    """{"seed", "size", "identity"} when `path` is a portrait written by `save_render` whose pixels are still exactly
    that render (checked by rendering it again), else None: a photo, a screenshot, an edited or re-encoded render."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            tag = getattr(image, "text", {}).get(RENDER_TAG)
            if tag is None:
                return None
            origin = json.loads(tag)
            world = SyntheticWorld(int(origin["seed"]), int(origin["size"]))
            index = int(origin["identity"])
            pixels = np.asarray(image.convert("RGB"))
        expected = world.portrait(index)
    except (OSError, UnidentifiedImageError, json.JSONDecodeError, TypeError, KeyError, ValueError, EmodiffError):
        return None
    return origin if np.array_equal(pixels, expected) else None


def make_store(root: str | Path, n_identities: int = 8, clips_per_identity: int = 4, n_frames: int = 50,
               size: int = 64, fps: int = 25, emotions: Sequence[str] = EMOTIONS, levels: Sequence[int] = (1, 2, 3),
               seed: int = 0, held_out_identities: int = 0) -> ClipStore:
    """Render a MEAD-like synthetic clip store (docs/design.md §3) with the world's true arrays.

    Clip ids follow MEAD's flattened names (`syn003_happy_2_001`). Each clip holds frames, audio.wav,
    audio features, the true landmarks, expression.npy = the 8 true parameters padded with zeros to
    D = 50 with the mouth_open column zeroed (the emotional part), mouth_open.npy = the true mouth
    opening (T,) and intensity.npy = the true k(t). The last `held_out_identities` identities are marked
    `split: test` in meta.json and the manifest (the rest `train`). Finished clips are kept, so an
    interrupted run resumes; the world description is written to stats/synthetic_world.json.
    """
    if n_identities < 1 or clips_per_identity < 1 or n_frames < 1:
        raise EmodiffError("A synthetic store needs at least one identity, one clip per identity and one frame.")
    if not 0 <= held_out_identities < n_identities:
        raise EmodiffError(f"held_out_identities must be in [0, {n_identities - 1}], got {held_out_identities}.")
    for level in levels:
        if level not in LEVEL_INTENSITY:
            raise EmodiffError(f"Emotion level must be one of {sorted(LEVEL_INTENSITY)}, got {level}.")
    world = SyntheticWorld(seed, size, fps)
    plan = _clip_plan(n_identities, clips_per_identity, emotions, levels)
    features = "mel"
    description = {
        "seed": seed, "size": size, "fps": fps, "n_frames": n_frames, "expression_params": list(EXPRESSION_PARAMS),
        "expression_dim": EXPRESSION_DIM, "emotion_directions": {e: EMOTION_DIRECTIONS[i].tolist() for i, e in enumerate(EMOTIONS)},
        "level_intensity": LEVEL_INTENSITY, "audio_features": features,
        "held_out_identities": [f"syn{i:03d}" for i in range(n_identities - held_out_identities, n_identities)],
    }
    described = Path(root) / "stats" / WORLD_FILE
    if described.is_file():
        before = json.loads(described.read_text())
        changed = [key for key in ("seed", "size", "fps", "n_frames", "held_out_identities") if before.get(key) != description[key]]
        if changed:
            raise EmodiffError(f"{root} holds a synthetic world made with other {', '.join(changed)}; use a new folder.")
    store = ClipStore.create(root)
    write_json_atomic(described, description)
    done = store.clip_ids()
    for i, j, emotion, level in tqdm(plan, desc="synthetic clips", unit="clip"):
        name = f"syn{i:03d}"
        clip_id = f"{name}_{emotion}_{level}_{j:03d}"
        if clip_id in done and (store.clip_path(clip_id) / "mouth_open.npy").is_file():
            continue
        clip = world.sample_clip(i, emotion, level, n_frames, np.random.default_rng([seed, _CLIP_STREAM, i, j]))
        split = "test" if i >= n_identities - held_out_identities else "train"
        labels = {"identity": name, "emotion": clip.emotion, "level": level, "fps": fps, "split": split}
        expression = np.zeros((n_frames, EXPRESSION_DIM), np.float32)
        expression[:, :len(EXPRESSION_PARAMS)] = clip.expression
        expression[:, MOUTH_OPEN] = 0.0  # the jaw is not part of the condition (FLAME's jaw pose vs ψ)
        written = store.write_clip(clip_id, {
            "frames": clip.frames,
            "audio_feats": extract_audio_features(clip.audio, fps, features),
            "landmarks": clip.landmarks,
            "expression": expression,
            "intensity": clip.intensity,
        }, {**labels, "source": "synthetic", "size": size,
            "extractors": {"expression": "synthetic-truth", "landmarks": "synthetic-truth", "audio_features": features},
            "synthetic": {"seed": seed, "identity_index": i, "clip_index": j}}, audio=clip.audio)
        save_npy_atomic(written.path / "mouth_open.npy", clip.expression[:, MOUTH_OPEN].astype(np.float32))
        store.append_manifest({"id": clip_id, "source": "synthetic", "status": "ok", "n_frames": n_frames, **labels})
    return store


def export_videos(store: ClipStore | str | Path, out_dir: str | Path, clip_ids: Sequence[str] | None = None,
                  upscale: int = 1) -> list[Path]:
    """Write clips of a store as `<out_dir>/<clip id>.mp4` (H.264 with the clip's audio as AAC) and
    `.wav` for viewing; `upscale` repeats pixels so small renders are easier to watch."""
    if upscale < 1:
        raise EmodiffError(f"The upscale factor must be a positive integer, got {upscale}.")
    store = store if isinstance(store, ClipStore) else ClipStore.open(store)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for clip_id in tqdm(clip_ids if clip_ids is not None else store.clip_ids(), desc="export", unit="clip"):
        clip = store.clip(clip_id)
        audio, _ = clip.audio()
        with VideoWriter(out / f"{clip_id}.mp4", fps=clip.meta["fps"], audio=audio) as writer:
            for frame in clip.frames:
                writer.write(frame.repeat(upscale, axis=0).repeat(upscale, axis=1))
        with atomic_path(out / f"{clip_id}.wav") as tmp:
            write_wav(tmp, audio)
        written.append(out / f"{clip_id}.mp4")
    return written
