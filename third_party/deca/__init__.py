"""FLAME and a DECA-compatible coarse encoder, written from the papers and the file formats.

Loads the user's official files (DECA's `deca_model.tar`, FLAME 2020 `generic_model.pkl`,
`landmark_embedding.npy`) without chumpy, pytorch3d or torchvision, and without running
pickled code. See docs/design.md §6.
"""

from third_party.deca.assets import load_flame_model, load_landmark_embedding
from third_party.deca.encoder import DecaEncoder, load_deca_encoder
from third_party.deca.extractor import DecaExpressionExtractor
from third_party.deca.flame import Flame

__all__ = ["DecaEncoder", "DecaExpressionExtractor", "Flame", "load_deca_encoder", "load_flame_model",
           "load_landmark_embedding"]
