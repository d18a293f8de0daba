"""`emodiff prepare --expression deca`: FLAME ψ, poses and fit quality per frame, from the user's files.

The DECA checkpoint and FLAME model are the tiny ones of tests/deca_assets.py (real file formats).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import third_party.deca.extractor as deca_extractor
from emodiff.cli import main as cli_main
from emodiff.data.expression import raw_intensity
from emodiff.data.prepare import clip_neutral, reprojection_summary
from emodiff.data.store import ClipStore
from tests.deca_assets import tiny_encoder, write_flame_files
from third_party.deca.assets import FLAME_SOURCE
from third_party.deca.encoder import DECA_SOURCE
from third_party.deca.extractor import DecaExpressionExtractor

SIZE = 64
CLIPS = {"mead_sad_crop.mp4": "M030_sad_3_001.mp4", "mead_happy_crop.mp4": "M030_happy_3_001.mp4"}
PER_FRAME = {"expression": 50, "jaw_pose": 3, "global_pose": 3, "reprojection_error": None}


@pytest.fixture(scope="module")
def deca_files(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny deca_model.tar and a FLAME generic_model.pkl with landmark_embedding.npy beside it."""
    folder = tmp_path_factory.mktemp("deca")
    write_flame_files(folder, np.random.default_rng(0))
    torch.save({"E_flame": tiny_encoder().state_dict()}, folder / "deca_model.tar")
    return folder / "deca_model.tar", folder / "generic_model.pkl"


@pytest.fixture(scope="module")
def prepared(fixtures_dir, deca_files, tmp_path_factory) -> tuple[ClipStore, list[str]]:
    """Two real MEAD clips prepared with --expression deca in one process; records every model load."""
    sources = tmp_path_factory.mktemp("src")
    for original, name in CLIPS.items():
        shutil.copy(fixtures_dir / original, sources / name)
    out = tmp_path_factory.mktemp("store") / "store"
    loads = []
    load = deca_extractor.load_deca_encoder
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(deca_extractor, "load_deca_encoder", lambda path: loads.append(str(path)) or load(path))
        assert cli_main(["prepare", str(sources), "--out", str(out), "--size", str(SIZE), "--workers", "1",
                         "--expression", "deca", "--deca-model", str(deca_files[0]),
                         "--flame-model", str(deca_files[1])]) == 0
    return ClipStore.open(out), loads


def test_deca_arrays_are_the_extractors_output_on_the_stored_crops(prepared, deca_files):
    store, _ = prepared
    extractor = DecaExpressionExtractor(*deca_files)
    assert store.clip_ids() == sorted(name[:-4] for name in CLIPS.values())
    for clip_id in store.clip_ids():
        clip = store.clip(clip_id)
        expected = extractor.extract(np.array(clip.frames), np.array(clip.landmarks))
        stored = {"expression": np.asarray(clip.expression),
                  **{key: np.load(clip.path / f"{key}.npy") for key in PER_FRAME if key != "expression"}}
        for key, width in PER_FRAME.items():
            assert stored[key].shape == ((clip.n_frames, width) if width else (clip.n_frames,)), key
            np.testing.assert_allclose(stored[key], expected[key], rtol=1e-4, atol=1e-5, err_msg=f"{clip_id}/{key}")
        assert np.ptp(stored["expression"], axis=0).max() > 0  # ψ follows the frames, not a constant
        assert clip.meta["expression_extractor"] == {"name": "deca", "version": "1"}
        assert clip.meta["reprojection_error"] == reprojection_summary(stored["reprojection_error"])
        assert 0 < clip.meta["reprojection_error"]["mean"] <= clip.meta["reprojection_error"]["p95"]


def test_pseudo_intensity_is_computed_from_deca_expressions(prepared):
    store, _ = prepared
    scale = json.loads((store.stats_dir / "intensity.json").read_text())["scale"]
    for clip_id in store.clip_ids():
        clip = store.clip(clip_id)
        expression = np.asarray(clip.expression)
        reference = clip_neutral(expression, clip, {})  # no neutral clips: the clip's least expressive frames
        expected = np.clip(raw_intensity(expression, reference) / scale, 0, 1)
        np.testing.assert_allclose(clip.intensity, expected, atol=1e-6)


def test_models_are_loaded_once_per_process(prepared, deca_files):
    _, loads = prepared
    assert loads == [str(deca_files[0])]  # two clips and the finalisation share one extractor


def test_missing_model_files_or_device_give_one_clear_error(deca_files, tmp_path, capsys):
    source = tmp_path / "M030_sad_3_001.mp4"
    source.touch()
    out = tmp_path / "store"
    assert cli_main(["prepare", str(source), "--out", str(out), "--expression", "deca"]) == 1
    error = capsys.readouterr().err
    assert error.startswith("emodiff: error: ") and len(error.strip().splitlines()) == 1
    assert "deca_model.tar (--deca-model, not given) and generic_model.pkl (--flame-model, not given)" in error
    assert DECA_SOURCE in error and FLAME_SOURCE in error
    missing = tmp_path / "flame" / "generic_model.pkl"
    assert cli_main(["prepare", str(source), "--out", str(out), "--expression", "deca",
                     "--deca-model", str(deca_files[0]), "--flame-model", str(missing)]) == 1
    error = capsys.readouterr().err
    assert f"generic_model.pkl (--flame-model, {missing} not found)" in error and FLAME_SOURCE in error
    assert "deca_model.tar" not in error and "Traceback" not in error
    assert cli_main(["prepare", str(source), "--out", str(out), "--expression", "deca", "--device", "gpu0",
                     "--deca-model", str(deca_files[0]), "--flame-model", str(deca_files[1])]) == 1
    assert capsys.readouterr().err.startswith("emodiff: error: Device 'gpu0' cannot be used here: ")
    assert not out.exists()
