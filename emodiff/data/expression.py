"""Expression vectors and pseudo intensity (docs/design.md §4.2, §5.3).

Extractors plug in by name through `EXPRESSION_EXTRACTORS` ("module:Class"); the options given to
`make_expression_extractor` go to the class's constructor (`landmarks` takes none; `deca` takes
the user's `deca_model`, `flame_model` and `device`). Every extractor has
`extract(frames, landmarks68, mesh) -> dict of per-frame arrays` (run per clip; the key
"expression" is the (T, D) vector itself, other keys are kept as `<key>.npy` in the clip folder).
Store-level extractors also have `fit(store, clip_ids)` (a basis over the whole store, saved in
`stats/`), `load(store)` and `transform(clip) -> (T, D)`.

`deca` (the paper's choice, third_party/deca): FLAME's ψ from DECA's coarse encoder per frame,
with the jaw and global pose and the landmark re-projection error of the fit.

`landmarks` (the offline default): each frame's dense 3D mesh is similarity-aligned (Umeyama
Procrustes on the rigid points `RIGID_POINTS`) to the store's canonical shape (a generalised
Procrustes mean), its offset from the identity's neutral mesh is projected on an uncentred PCA
basis of the store's offsets and whitened, so the neutral face is the origin and
neutral + k·direction is meaningful. Whitening divides component j by sqrt(λ_j + WHITEN_FLOOR·λ_1)
(like FLAME's ψ, the leading components get unit scale; the floor keeps near-empty components,
which hold landmark jitter, from being blown up to unit variance). D = 50; with too little data
the basis has fewer components and the remaining dimensions are zero.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from emodiff.data.store import Clip, ClipStore
from emodiff.errors import EmodiffError
from emodiff.files import atomic_path

EXPRESSION_DIM = 50
NEUTRAL_FRACTION = 0.1  # share of a clip's frames taken as its neutral reference when none is labelled
INTENSITY_PERCENTILE = 99.0
WHITEN_FLOOR = 0.01  # variance floor of the whitening, relative to the leading component

# Vertices that move with the head but hardly with expressions: forehead (10, 151, 9, 8), nose
# bridge and tip (168, 6, 197, 195, 5, 4, 1), inner and outer eye corners (133, 362, 33, 263),
# and the face sides at the ears (234, 454, 127, 356). For a 68-point mesh (fan): nose bridge and
# nostrils (27-35), eye corners (36, 39, 42, 45) and the jaw ends at the ears (0, 16).
RIGID_POINTS: dict[int, tuple[int, ...]] = {
    478: (10, 151, 9, 8, 168, 6, 197, 195, 5, 4, 1, 133, 362, 33, 263, 234, 454, 127, 356),
    68: (27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 39, 42, 45, 0, 16),
}


class ExpressionExtractor(Protocol):
    name: str
    version: str

    def extract(self, frames: np.ndarray, landmarks68: np.ndarray, mesh: np.ndarray | None) -> dict[str, np.ndarray]:
        """Per-frame arrays of one clip: crops (T,S,S,3), crop landmarks (T,68,2), source mesh (T,N,3)."""


@runtime_checkable
class StoreExpressionExtractor(ExpressionExtractor, Protocol):
    def fit(self, store: ClipStore, clip_ids: list[str]) -> None:
        """Fit store-level statistics over these clips and save them under store.stats_dir."""

    def load(self, store: ClipStore) -> None:
        """Load what `fit` saved."""

    def transform(self, clip: Clip) -> np.ndarray:
        """(T, D) expression vectors of one extracted clip."""


EXPRESSION_EXTRACTORS: dict[str, str] = {
    "landmarks": "emodiff.data.expression:LandmarkExpression",
    "deca": "third_party.deca.extractor:DecaExpressionExtractor",
}


def make_expression_extractor(name: str, **options: Any) -> ExpressionExtractor:
    """The extractor registered as `name`, built with `options` (its constructor's arguments)."""
    if name not in EXPRESSION_EXTRACTORS:
        raise EmodiffError(f"Unknown expression extractor '{name}'; choose one of: {', '.join(EXPRESSION_EXTRACTORS)}.")
    module, cls = EXPRESSION_EXTRACTORS[name].split(":")
    return getattr(importlib.import_module(module), cls)(**options)


def save_npz_atomic(path: Path, **arrays: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


# -- Procrustes --------------------------------------------------------------------------------
def similarity_transform(source: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Least-squares similarity (Umeyama 1991) mapping source (T, K, 3) onto target (K, 3).

    Returns scale (T,), rotation (T, 3, 3) and translation (T, 3) with target ≈ s·R·x + t.
    """
    mu_s, mu_t = source.mean(axis=1, keepdims=True), target.mean(axis=0)
    xs, xt = source - mu_s, target - mu_t
    cov = np.einsum("kj,tki->tji", xt, xs) / source.shape[1]
    u, sig, vt = np.linalg.svd(cov)
    d = np.ones_like(sig)
    d[:, -1] = np.sign(np.linalg.det(u @ vt))  # no reflections
    rotation = u @ (d[..., None] * vt)
    scale = (sig * d).sum(axis=1) / (xs ** 2).sum(axis=(1, 2)) * source.shape[1]
    translation = mu_t - scale[:, None] * np.einsum("tij,tj->ti", rotation, mu_s[:, 0])
    return scale, rotation, translation


def align_to(mesh: np.ndarray, canonical_rigid: np.ndarray, rigid: tuple[int, ...]) -> np.ndarray:
    """Similarity-align every frame of (T, N, 3) meshes to the canonical rigid points."""
    scale, rotation, translation = similarity_transform(mesh[:, rigid], canonical_rigid)
    return scale[:, None, None] * np.einsum("tij,tnj->tni", rotation, mesh) + translation[:, None]


def normalise_mesh(mesh: np.ndarray) -> np.ndarray:
    """Centre each frame on its rigid points and scale them to unit RMS (keeps float16 precise)."""
    rigid = list(RIGID_POINTS[mesh.shape[1]])
    centred = mesh - mesh[:, rigid].mean(axis=1, keepdims=True)
    return centred / np.sqrt((centred[:, rigid] ** 2).sum(axis=2).mean(axis=1))[:, None, None]


def procrustes_mean(shapes: np.ndarray, iterations: int = 3) -> np.ndarray:
    """Generalised Procrustes mean of (M, K, 3) shapes, centred, unit RMS."""
    mean = shapes[0]
    for _ in range(iterations):
        scale, rotation, translation = similarity_transform(shapes, mean)
        mean = (scale[:, None, None] * np.einsum("tij,tkj->tki", rotation, shapes) + translation[:, None]).mean(axis=0)
        mean = mean - mean.mean(axis=0)
        mean = mean / np.sqrt((mean ** 2).sum(axis=1).mean())
    return mean


# -- neutral reference and pseudo intensity (§5.3) ---------------------------------------------
def identity_key(clip: Clip) -> str:
    """Identity label of a clip, or the clip itself when it has none."""
    return clip.identity or clip.clip_id


def least_expressive_frames(values: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Indices of the NEUTRAL_FRACTION frames of (T, ...) values closest to `reference`."""
    distance = np.linalg.norm((values - reference).reshape(len(values), -1), axis=1)
    count = max(1, int(round(NEUTRAL_FRACTION * len(values))))
    return np.argsort(distance, kind="stable")[:count]


def raw_intensity(expression: np.ndarray, neutral: np.ndarray) -> np.ndarray:
    """L_i = Σ_j |e_i,j − e^N_j| (docs/design.md §5.3), before the store-wide normalisation."""
    return np.abs(expression - neutral).sum(axis=1)


def strongest_level_expressions(store: ClipStore) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """e_n, the mean expression of the store's neutral clips, and e_y per emotion, the mean expression of its
    clips at the emotion's strongest level (eq. 14–15: k = 0 and k = 1).

    A store without neutral clips (HDTF-style or emotional-only data) takes e_n from the reference `prepare` uses
    for the pseudo intensity there: the mean of each clip's NEUTRAL_FRACTION least expressive frames.
    """
    clips = [store.clip(i) for i in store.clip_ids()]
    labelled = [c for c in clips if c.emotion is not None]
    strongest: dict[str, int] = {}
    for clip in labelled:
        strongest[clip.emotion] = max(strongest.get(clip.emotion, 0), clip.level or 0)
    sums: dict[str, list] = {}
    for clip in labelled:
        if clip.emotion == "neutral" or (clip.level or 0) == strongest[clip.emotion]:
            expression = np.asarray(clip.expression, dtype=np.float64)
            total = sums.setdefault(clip.emotion, [0.0, 0])
            total[0], total[1] = total[0] + expression.sum(axis=0), total[1] + len(expression)
    if "neutral" not in sums:
        if not clips:
            raise EmodiffError(f"The store {store.root} has no clips to take the neutral expression from.")
        calmest = [np.asarray(c.expression, dtype=np.float64) for c in clips]
        calmest = [e[least_expressive_frames(e, np.zeros(e.shape[1]))] for e in calmest]
        sums["neutral"] = [sum(e.sum(axis=0) for e in calmest), sum(len(e) for e in calmest)]
    means = {emotion: total / count for emotion, (total, count) in sums.items()}
    return means.pop("neutral"), means


class LandmarkExpression:
    """The `landmarks` extractor (module docstring): mesh → Procrustes → offsets → whitened PCA."""

    name = "landmarks"
    version = "1"
    stats_name = "expression_landmarks.npz"
    max_canonical_frames = 4000

    def __init__(self) -> None:
        self.state: dict[str, Any] | None = None

    def extract(self, frames: np.ndarray, landmarks68: np.ndarray, mesh: np.ndarray | None) -> dict[str, np.ndarray]:
        if mesh is None:
            raise EmodiffError("The 'landmarks' expression extractor needs a landmark backend that gives a 3D mesh.")
        return {"mesh": normalise_mesh(mesh.astype(np.float64)).astype(np.float16)}

    @staticmethod
    def _mesh(clip: Clip) -> np.ndarray:
        return np.load(clip.path / "mesh.npy", mmap_mode="r")

    def fit(self, store: ClipStore, clip_ids: list[str]) -> None:
        clips = [store.clip(cid) for cid in clip_ids]
        n_points = self._mesh(clips[0]).shape[1]
        rigid = RIGID_POINTS[n_points]
        total = sum(c.n_frames for c in clips)
        step = max(1, total // self.max_canonical_frames)
        samples = np.concatenate([self._mesh(c)[::step][:, rigid].astype(np.float64) for c in clips])
        canonical = procrustes_mean(samples)
        self.state = {"canonical": canonical, "rigid": rigid}

        by_identity: dict[str, list[Clip]] = {}
        for clip in clips:
            by_identity.setdefault(identity_key(clip), []).append(clip)
        neutral = {}
        for identity, members in by_identity.items():
            labelled = [c for c in members if c.emotion == "neutral"]
            aligned = np.concatenate([self._aligned(c) for c in (labelled or members)])
            if labelled:
                neutral[identity] = aligned.mean(axis=0)
            else:
                neutral[identity] = aligned[least_expressive_frames(aligned, np.median(aligned, axis=0))].mean(axis=0)
        self.state["neutral"] = neutral

        features = n_points * 3
        moment = np.zeros((features, features))
        for clip in clips:
            offsets = (self._aligned(clip) - neutral[identity_key(clip)]).reshape(clip.n_frames, -1)
            moment += offsets.T @ offsets
        eigenvalues, eigenvectors = np.linalg.eigh(moment / total)
        order = np.argsort(eigenvalues)[::-1][:EXPRESSION_DIM]
        eigenvalues, eigenvectors = eigenvalues[order], eigenvectors[:, order]
        keep = eigenvalues > 1e-10 * max(eigenvalues[0], 1e-30)
        eigenvectors *= np.sign(eigenvectors[np.abs(eigenvectors).argmax(axis=0), np.arange(len(order))])
        basis = np.zeros((features, EXPRESSION_DIM))
        scales = np.ones(EXPRESSION_DIM)
        basis[:, :keep.sum()] = eigenvectors[:, keep]
        scales[:keep.sum()] = np.sqrt(eigenvalues[keep] + WHITEN_FLOOR * eigenvalues[0])
        self.state.update(basis=basis, scales=scales)
        identities = sorted(neutral)
        save_npz_atomic(store.stats_dir / self.stats_name, canonical=canonical, rigid=np.array(rigid),
                        basis=basis, scales=scales, identities=np.array(identities),
                        neutral_meshes=np.stack([neutral[i] for i in identities]))

    def load(self, store: ClipStore) -> None:
        path = store.stats_dir / self.stats_name
        if not path.is_file():
            raise EmodiffError(f"{path} is missing; run `emodiff prepare` to finish the store.")
        with np.load(path) as stats:
            self.state = {
                "canonical": stats["canonical"], "rigid": tuple(int(i) for i in stats["rigid"]),
                "basis": stats["basis"], "scales": stats["scales"],
                "neutral": dict(zip(stats["identities"].tolist(), stats["neutral_meshes"])),
            }

    def _aligned(self, clip: Clip) -> np.ndarray:
        return align_to(self._mesh(clip).astype(np.float64), self.state["canonical"], self.state["rigid"])

    def transform(self, clip: Clip) -> np.ndarray:
        """(T, 50) whitened PCA coefficients of the aligned mesh's offset from the neutral mesh."""
        offsets = (self._aligned(clip) - self.state["neutral"][identity_key(clip)]).reshape(clip.n_frames, -1)
        return (offsets @ self.state["basis"] / self.state["scales"]).astype(np.float32)
