"""Safe loading of the official FLAME 2020 model and DECA's landmark embedding.

`generic_model.pkl` is a Python-2 pickle whose arrays are chumpy objects and whose joint
regressor is a scipy sparse matrix; `landmark_embedding.npy` is an `np.save` of a dict (some
entries torch tensors). Both are read by an allow-list unpickler: numpy arrays, a few builtins,
torch tensors (their storages through `torch.load(weights_only=True)`), scipy's `csc_matrix`
and chumpy's array nodes are rebuilt as data; every other global is refused before anything
runs. Neither chumpy nor scipy's pickled classes are ever imported or instantiated.
"""

from __future__ import annotations

import builtins
import collections
import io
import os
import pickle
import tempfile
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, BinaryIO, Callable

import numpy as np
import scipy.sparse
import torch
import torch._utils

from emodiff.errors import EmodiffError

FLAME_SOURCE = "FLAME 2020 from https://flame.is.tue.mpg.de (registration required)"
EMBEDDING_SOURCE = "data/landmark_embedding.npy of https://github.com/YadiraF/DECA"


class _PickledNode:
    """Stand-in for an allow-listed foreign class: keeps its constructor arguments and state."""

    arg_names: tuple[str, ...] = ()

    def __new__(cls, *args: Any) -> "_PickledNode":
        node = super().__new__(cls)
        node.state = dict(zip(cls.arg_names, args))
        return node

    def __init__(self, *args: Any) -> None:  # REDUCE calls cls(*args); __new__ kept them
        pass

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple):  # (dict state, slot state)
            state = {**(state[0] or {}), **(state[1] or {})}
        self.state.update(state)


class _ChumpyArray(_PickledNode):
    """chumpy.ch.Ch: a leaf holding the array `x`."""

    arg_names = ("x",)

    def value(self) -> np.ndarray:
        return np.asarray(_materialise(self.state["x"]))


class _ChumpySelect(_PickledNode):
    """chumpy.reordering.Select: `a.ravel()[idxs]`, reshaped to `preferred_shape`."""

    arg_names = ("a", "idxs", "preferred_shape")

    def value(self) -> np.ndarray:
        selected = _materialise(self.state["a"]).ravel()[np.asarray(self.state["idxs"])]
        shape = self.state.get("preferred_shape")
        return selected if shape is None else selected.reshape(shape)


class _ChumpyReshape(_PickledNode):
    """chumpy.reordering.Reshape: `a.reshape(newshape)`."""

    arg_names = ("a", "newshape")

    def value(self) -> np.ndarray:
        return _materialise(self.state["a"]).reshape(self.state["newshape"])


class _ChumpyTranspose(_PickledNode):
    """chumpy.reordering.transpose: `a.transpose(axes)`."""

    arg_names = ("a", "axes")

    def value(self) -> np.ndarray:
        return np.transpose(_materialise(self.state["a"]), self.state.get("axes"))


class _CscMatrix(_PickledNode):
    """scipy.sparse csc_matrix, rebuilt from its (data, indices, indptr, shape) state."""

    def value(self) -> scipy.sparse.csc_matrix:
        shape = self.state.get("_shape", self.state.get("shape"))
        arrays = (np.asarray(self.state[k]) for k in ("data", "indices", "indptr"))
        return scipy.sparse.csc_matrix(tuple(arrays), shape=tuple(shape))


def _reconstructor(cls: type, base: type, state: Any) -> Any:
    """copy_reg._reconstructor, limited to the stand-in classes above (protocol 0/1 objects)."""
    if not (isinstance(cls, type) and issubclass(cls, _PickledNode)) or base is not object or state is not None:
        raise pickle.UnpicklingError(f"copy_reg._reconstructor with {cls!r} is not allowed")
    return cls.__new__(cls)


def _latin1_bytes(text: str, encoding: str) -> bytes:
    """_codecs.encode as Python 3 protocol-2 pickles use it for bytes; latin-1 only."""
    if encoding.replace("-", "").lower() != "latin1":
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r} is not allowed")
    return text.encode("latin-1")


def _storage_from_bytes(data: bytes) -> Any:
    """torch.storage._load_from_bytes, but through the weights-only loader."""
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


_NUMPY_RECONSTRUCT, _, _ = np.ndarray.__reduce__(np.zeros(1))
_NUMPY_SCALAR = np.float64(0).__reduce__()[0]
_ALLOWED: dict[tuple[str, str], Any] = {
    **{(m, "_reconstruct"): _NUMPY_RECONSTRUCT for m in ("numpy.core.multiarray", "numpy._core.multiarray")},
    **{(m, "scalar"): _NUMPY_SCALAR for m in ("numpy.core.multiarray", "numpy._core.multiarray")},
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    **{(m, n): getattr(builtins, n) for m in ("__builtin__", "builtins") for n in ("set", "frozenset", "object")},
    ("copy_reg", "_reconstructor"): _reconstructor,
    ("copyreg", "_reconstructor"): _reconstructor,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("_codecs", "encode"): _latin1_bytes,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch.storage", "_load_from_bytes"): _storage_from_bytes,
    ("chumpy.ch", "Ch"): _ChumpyArray,
    ("chumpy.reordering", "Select"): _ChumpySelect,
    ("chumpy.reordering", "Reshape"): _ChumpyReshape,
    ("chumpy.reordering", "transpose"): _ChumpyTranspose,
    **{(m, "csc_matrix"): _CscMatrix for m in ("scipy.sparse.csc", "scipy.sparse._csc", "scipy.sparse")},
}


class RefusedGlobal(pickle.UnpicklingError):
    """The pickle names a global outside the allow-list."""


class AllowListUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals of FLAME/DECA asset files (see module docstring)."""

    def __init__(self, file: BinaryIO) -> None:
        super().__init__(file, encoding="latin1")

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise RefusedGlobal(f"{module}.{name}") from None


def _materialise(obj: Any) -> Any:
    """Replace stand-ins by numpy/scipy values and torch tensors by numpy arrays, recursively."""
    if isinstance(obj, _PickledNode):
        return obj.value()
    if isinstance(obj, torch.Tensor):
        return obj.numpy()
    if isinstance(obj, dict):
        return {key: _materialise(val) for key, val in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_materialise(val) for val in obj)
    if isinstance(obj, np.ndarray) and obj.dtype == object:
        if obj.ndim == 0:  # np.save of a dict
            return _materialise(obj.item())
        out = np.empty(obj.shape, dtype=object)
        for index, val in np.ndenumerate(obj):
            out[index] = _materialise(val)
        return out
    return obj


def safe_unpickle(file: BinaryIO, what: Path) -> Any:
    """Unpickle `file` with the allow-list and turn stand-ins into data; refusals become EmodiffError."""
    try:
        return _materialise(AllowListUnpickler(file).load())
    except RefusedGlobal as refused:
        raise EmodiffError(f"{what} refers to '{refused}', which no FLAME/DECA asset contains; refused to "
                           "load it (nothing in it was run)") from None
    except (pickle.UnpicklingError, EOFError, KeyError, ValueError, TypeError, AttributeError, RecursionError) as err:
        raise EmodiffError(f"{what} is not a readable FLAME/DECA asset ({type(err).__name__}: {err})") from None


def _require(path: str | os.PathLike, source: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise EmodiffError(f"{path} not found: get {path.name} from {source}")
    return path


@dataclass(frozen=True)
class FlameAssets:
    """The arrays of a FLAME model (V vertices, J = 5 joints: global, neck, jaw, left eye, right eye)."""

    v_template: np.ndarray    # (V, 3) mean head
    shapedirs: np.ndarray     # (V, 3, 300 + 100) identity then expression blendshapes
    posedirs: np.ndarray      # (V, 3, 9 (J - 1)) pose-corrective blendshapes
    J_regressor: np.ndarray   # (J, V) joints from vertices (dense here)
    weights: np.ndarray       # (V, J) skinning weights
    parents: np.ndarray       # (J,) kinematic tree, -1 for the root
    faces: np.ndarray         # (F, 3) triangles


def _flame_from_dict(model: dict[str, Any], path: Path) -> FlameAssets:
    missing = [key for key in ("v_template", "shapedirs", "posedirs", "J_regressor", "weights",
                               "kintree_table", "f") if key not in model]
    if missing:
        raise EmodiffError(f"{path} is not a FLAME model: it lacks {', '.join(missing)}")
    regressor = model["J_regressor"]
    regressor = regressor.toarray() if scipy.sparse.issparse(regressor) else np.asarray(regressor)
    parents = np.asarray(model["kintree_table"])[0].astype(np.int64)
    parents[0] = -1
    assets = FlameAssets(
        v_template=np.asarray(model["v_template"], np.float32),
        shapedirs=np.asarray(model["shapedirs"], np.float32),
        posedirs=np.asarray(model["posedirs"], np.float32),
        J_regressor=regressor.astype(np.float32),
        weights=np.asarray(model["weights"], np.float32),
        parents=parents,
        faces=np.asarray(model["f"]).astype(np.int64),
    )
    n_verts, n_joints = assets.v_template.shape[0], assets.J_regressor.shape[0]
    expected = {"shapedirs": (n_verts, 3), "posedirs": (n_verts, 3), "J_regressor": (n_joints, n_verts),
                "weights": (n_verts, n_joints), "parents": (n_joints,)}
    for name, lead in expected.items():
        if getattr(assets, name).shape[:len(lead)] != lead:
            raise EmodiffError(f"{path}: {name} has shape {getattr(assets, name).shape}, expected {lead}+ "
                               f"for a {n_verts}-vertex, {n_joints}-joint FLAME model")
    if assets.posedirs.shape[2] != 9 * (n_joints - 1):
        raise EmodiffError(f"{path}: posedirs has {assets.posedirs.shape[2]} pose correctives, "
                           f"expected {9 * (n_joints - 1)}")
    return assets


def load_flame_model(path: str | os.PathLike, cache: bool = False) -> FlameAssets:
    """Load FLAME's `generic_model.pkl` (or a `.npz` made by `cache=True`) without chumpy.

    With `cache=True` the arrays are also written next to the pickle as `<name>.npz` (atomically)
    and read from there while it is newer than the pickle; `.npz` loading never unpickles.
    """
    path = _require(path, FLAME_SOURCE)
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as arrays:
            return FlameAssets(**{f.name: arrays[f.name] for f in fields(FlameAssets)})
    cached = path.with_suffix(".npz")
    if cache and cached.is_file() and cached.stat().st_mtime >= path.stat().st_mtime:
        return load_flame_model(cached)
    with path.open("rb") as file:
        model = safe_unpickle(file, path)
    if not isinstance(model, dict):
        raise EmodiffError(f"{path} is not a FLAME model: it holds a {type(model).__name__}, not a dict")
    assets = _flame_from_dict(model, path)
    if cache:
        arrays = {f.name: getattr(assets, f.name) for f in fields(FlameAssets)}
        write_atomic(cached, lambda file: np.savez(file, **arrays))
    return assets


def write_atomic(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Run `write` on a temporary file beside `path`, then rename it into place (never half-written)."""
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix)
    try:
        with os.fdopen(handle, "wb") as file:
            write(file)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass(frozen=True)
class LandmarkEmbedding:
    """Where FLAME's 68 landmarks lie on the mesh: triangle indices + barycentric weights."""

    static_faces: np.ndarray    # (51,) iBUG points 17..67 (brows, nose, eyes, mouth)
    static_bary: np.ndarray     # (51, 3)
    dynamic_faces: np.ndarray   # (79, 17) contour 0..16 per yaw bin (0..39°, then -1..-39°)
    dynamic_bary: np.ndarray    # (79, 17, 3)
    full_faces: np.ndarray      # (68,) the fixed 3D landmarks
    full_bary: np.ndarray       # (68, 3)


_EMBEDDING_KEYS = {"static_faces": "static_lmk_faces_idx", "static_bary": "static_lmk_bary_coords",
                   "dynamic_faces": "dynamic_lmk_faces_idx", "dynamic_bary": "dynamic_lmk_bary_coords",
                   "full_faces": "full_lmk_faces_idx", "full_bary": "full_lmk_bary_coords"}


def load_landmark_embedding(path: str | os.PathLike) -> LandmarkEmbedding:
    """Load DECA's `landmark_embedding.npy` (a pickled dict) through the allow-list unpickler."""
    path = _require(path, EMBEDDING_SOURCE)
    with path.open("rb") as file:
        try:
            version = np.lib.format.read_magic(file)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                np.lib.format.read_array_header_2_0
            _, _, dtype = read_header(file)
        except ValueError as err:
            raise EmodiffError(f"{path} is not a .npy file ({err})") from None
        if dtype != object:  # noqa: E721 (a numpy dtype equals object for pickled content)
            raise EmodiffError(f"{path} holds a plain {dtype} array, not DECA's landmark-embedding dict")
        content = safe_unpickle(file, path)
    if not isinstance(content, dict) or not set(_EMBEDDING_KEYS.values()) <= set(content):
        raise EmodiffError(f"{path} is not DECA's landmark embedding: it needs the keys "
                           f"{', '.join(_EMBEDDING_KEYS.values())}")
    arrays = {name: np.asarray(content[key]) for name, key in _EMBEDDING_KEYS.items()}
    ints = {"static_faces", "dynamic_faces", "full_faces"}
    arrays = {name: a.astype(np.int64) if name in ints else a.astype(np.float32) for name, a in arrays.items()}
    arrays["full_faces"] = arrays["full_faces"].reshape(-1)
    arrays["full_bary"] = arrays["full_bary"].reshape(-1, 3)
    return LandmarkEmbedding(**arrays)
