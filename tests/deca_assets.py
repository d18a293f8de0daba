"""Tiny FLAME / DECA files written the way the official ones are, for the third_party.deca tests.

The FLAME-format pickle is written the way Python 2 wrote `generic_model.pkl` (protocol 2, byte
strings as BINSTRING, chumpy and scipy classes by name), with chumpy not installed.
"""

from __future__ import annotations

import copyreg
import pickle
import struct
from pathlib import Path

import numpy as np
import scipy.sparse
import torch

from third_party.deca.encoder import DecaEncoder

N_VERTS, N_FACES = 40, 60
PARENTS = [-1, 0, 1, 1, 1]  # global, neck, jaw, left eye, right eye
JAW_VERTS = np.arange(0, 10)       # fully skinned to the jaw
NECK_VERTS = np.arange(10, 20)     # fully skinned to the neck
BLENDED_VERTS = np.arange(20, 40)  # global/neck mix, no jaw weight
JAW_POSE_COLUMNS = slice(9, 18)    # pose correctives of the jaw: (R_jaw − I) entries


def _py2_class(module: str, name: str, reduce=None) -> type:
    namespace = {"__module__": module, "__qualname__": name, "py2_global": (module, name)}
    if reduce is not None:
        namespace["__reduce__"] = reduce
    return type(name, (), namespace)


def _reduce_call(self):  # GLOBAL cls, (), REDUCE, state, BUILD — as the brief describes chumpy.ch.Ch
    return type(self), (), dict(self.__dict__)


def _reduce_reconstructor(self):  # copy_reg._reconstructor(cls, object, None), state, BUILD (protocol 0/1 style)
    return copyreg._reconstructor, (type(self), object, None), dict(self.__dict__)


Ch = _py2_class("chumpy.ch", "Ch", _reduce_call)
Select = _py2_class("chumpy.reordering", "Select", _reduce_reconstructor)
CscMatrix = _py2_class("scipy.sparse.csc", "csc_matrix")  # default: NEWOBJ + BUILD


def _node(cls: type, **state) -> object:
    node = cls.__new__(cls)
    node.__dict__.update(state)
    return node


def chumpy_array(x: np.ndarray) -> object:
    """The state chumpy's Ch.__getstate__ gives: its __dict__ without _parents and _cache."""
    return _node(Ch, x=x, _dirty_vars=set(), _itr=None, _depends_on_deps={}, _make_dense=False,
                 _make_sparse=False)


class Py2Pickler(pickle._Pickler):
    """Protocol-2 pickler writing byte strings as Python 2 `str` and our stand-in classes by name."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_bytes(self, obj: bytes) -> None:
        header = pickle.SHORT_BINSTRING + bytes([len(obj)]) if len(obj) < 256 else \
            pickle.BINSTRING + struct.pack("<i", len(obj))
        self.write(header + obj)
        self.memoize(obj)

    dispatch[bytes] = save_bytes

    def save_global(self, obj, name=None) -> None:
        if hasattr(obj, "py2_global"):
            module, qualname = obj.py2_global
            self.write(pickle.GLOBAL + f"{module}\n{qualname}\n".encode())
            self.memoize(obj)
        else:
            super().save_global(obj, name)

    dispatch[type] = save_global


def jaw_weights() -> np.ndarray:
    weights = np.zeros((N_VERTS, 5))
    weights[JAW_VERTS, 2] = 1
    weights[NECK_VERTS, 1] = 1
    mix = np.random.default_rng(1).uniform(size=len(BLENDED_VERTS))
    weights[BLENDED_VERTS, 0], weights[BLENDED_VERTS, 1] = mix, 1 - mix
    return weights


def make_flame_dict(rng: np.random.Generator) -> dict[str, object]:
    """A small FLAME-format model with the official keys, chumpy arrays and a csc J_regressor."""
    v_template = rng.normal(size=(N_VERTS, 3))
    shapedirs = rng.normal(scale=0.01, size=(N_VERTS, 3, 400))
    posedirs = rng.normal(scale=0.01, size=(N_VERTS, 3, 36))
    posedirs[np.setdiff1d(np.arange(N_VERTS), JAW_VERTS), :, JAW_POSE_COLUMNS] = 0  # local correctives
    regressor = np.zeros((5, N_VERTS))
    for joint, verts in enumerate([BLENDED_VERTS, NECK_VERTS, JAW_VERTS, [0, 1], [2, 3]]):
        regressor[joint, verts] = 1 / len(verts)
    csc = scipy.sparse.csc_matrix(regressor)
    return {
        "v_template": chumpy_array(v_template),
        # shapedirs as chumpy's Select over a flat Ch, like the released models.
        "shapedirs": _node(Select, a=chumpy_array(shapedirs.ravel()[::-1].copy()),
                           idxs=np.arange(shapedirs.size)[::-1].copy(), preferred_shape=shapedirs.shape,
                           _dirty_vars=set()),
        "posedirs": chumpy_array(posedirs),
        "J_regressor": _node(CscMatrix, data=csc.data, indices=csc.indices, indptr=csc.indptr,
                             _shape=csc.shape, maxprint=50, format="csc"),
        "weights": chumpy_array(jaw_weights()),
        "kintree_table": np.array([[4294967295, 0, 1, 1, 1], [0, 1, 2, 3, 4]], dtype=np.int64),
        "f": rng.integers(0, N_VERTS, (N_FACES, 3)).astype(np.uint32),
        "J": chumpy_array(regressor @ v_template),
        "bs_style": "lbs",
        "bs_type": "lrotmin",
    }


def make_embedding(rng: np.random.Generator) -> dict[str, object]:
    """DECA's landmark_embedding.npy content (its dynamic entries are torch tensors)."""
    return {
        "static_lmk_faces_idx": rng.integers(0, N_FACES, 51),
        "static_lmk_bary_coords": rng.dirichlet(np.ones(3), 51),
        "dynamic_lmk_faces_idx": torch.from_numpy(rng.integers(0, N_FACES, (79, 17))),
        "dynamic_lmk_bary_coords": torch.from_numpy(rng.dirichlet(np.ones(3), (79, 17))).float(),
        "full_lmk_faces_idx": rng.integers(0, N_FACES, (1, 68)),
        "full_lmk_bary_coords": rng.dirichlet(np.ones(3), (1, 68)).astype(np.float32),
    }

def write_flame_files(folder: Path, rng: np.random.Generator) -> tuple[dict[str, object], dict[str, object]]:
    """generic_model.pkl (Python-2 style) and landmark_embedding.npy in `folder`; returns their contents."""
    model = make_flame_dict(rng)
    with (folder / "generic_model.pkl").open("wb") as file:
        Py2Pickler(file, protocol=2).dump(model)
    embedding = make_embedding(rng)
    np.save(folder / "landmark_embedding.npy", embedding, allow_pickle=True)
    return model, embedding


def tiny_encoder(seed: int = 0) -> DecaEncoder:
    """Width-4 ResNet-50 (same parameter names) with non-trivial BatchNorm statistics."""
    torch.manual_seed(seed)
    model = DecaEncoder(width=4, hidden=16)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.1)
            module.running_var.uniform_(0.5, 1.5)
            module.weight.data.uniform_(0.5, 1.5)
    return model.eval()
