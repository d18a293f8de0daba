"""FLAME and a DECA-compatible coarse encoder, written from the papers and the file formats.

Loads the user's official files (DECA's `deca_model.tar`, FLAME 2020 `generic_model.pkl`,
`landmark_embedding.npy`) without chumpy, pytorch3d or torchvision, and without running
pickled code. See DESIGN §6.
"""
