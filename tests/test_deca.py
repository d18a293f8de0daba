"""third_party.deca: safe FLAME/DECA asset loading, the FLAME layer, the coarse encoder, the extractor.

The tiny FLAME/DECA files come from tests/deca_assets.py (Python-2 style pickle, chumpy absent).
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.ndimage import map_coordinates
from scipy.spatial.transform import Rotation

from emodiff.errors import EmodiffError
from tests.deca_assets import JAW_POSE_COLUMNS, JAW_VERTS, N_VERTS, PARENTS, tiny_encoder, write_flame_files
from third_party.deca.assets import load_flame_model, load_landmark_embedding
from third_party.deca.encoder import CODE_SPLIT, DecaEncoder, crop_boxes, crop_faces, load_deca_encoder
from third_party.deca.extractor import DecaExpressionExtractor
from third_party.deca.flame import Flame, orthographic_project


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict[str, object]:
    folder = tmp_path_factory.mktemp("flame")
    model, embedding = write_flame_files(folder, np.random.default_rng(0))
    flame = Flame(load_flame_model(folder / "generic_model.pkl"), load_landmark_embedding(folder / "landmark_embedding.npy"))
    return {"folder": folder, "flame": flame, "embedding": embedding,
            "shapedirs": model["shapedirs"].a.x[::-1].reshape(N_VERTS, 3, 400), "posedirs": model["posedirs"].x,
            "v_template": model["v_template"].x, "faces": model["f"].astype(np.int64)}


def test_pickle_is_python2_style_with_chumpy_absent(assets) -> None:
    raw = (assets["folder"] / "generic_model.pkl").read_bytes()
    assert b"cchumpy.ch\nCh\n" in raw and b"cchumpy.reordering\nSelect\n" in raw
    assert b"cscipy.sparse.csc\ncsc_matrix\n" in raw and b"_codecs" not in raw
    with pytest.raises(ImportError):
        import chumpy  # noqa: F401


def test_flame_arrays_are_rebuilt_exactly(assets) -> None:
    model = load_flame_model(assets["folder"] / "generic_model.pkl")
    np.testing.assert_array_equal(model.shapedirs, assets["shapedirs"].astype(np.float32))
    np.testing.assert_array_equal(model.v_template, assets["v_template"].astype(np.float32))
    assert model.parents.tolist() == PARENTS
    np.testing.assert_allclose(model.J_regressor.sum(1), 1, atol=1e-6)


def test_zero_coefficients_and_pose_give_the_template(assets) -> None:
    out = assets["flame"](torch.zeros(2, 100), torch.zeros(2, 50), torch.zeros(2, 6))
    np.testing.assert_allclose(out["vertices"].numpy(), np.broadcast_to(assets["v_template"], (2, N_VERTS, 3)), atol=1e-6)


def test_expression_coefficient_moves_vertices_by_its_blendshape(assets) -> None:
    expression = torch.zeros(1, 50)
    expression[0, 7] = 2.5
    out = assets["flame"](torch.zeros(1, 100), expression, torch.zeros(1, 6))
    moved = out["vertices"][0].numpy() - assets["v_template"]
    np.testing.assert_allclose(moved, 2.5 * assets["shapedirs"][:, :, 300 + 7], atol=1e-6)


def test_jaw_rotation_moves_only_jaw_weighted_vertices(assets) -> None:
    flame = assets["flame"]
    jaw = np.array([0.35, -0.1, 0.05])
    pose = torch.zeros(1, 6)
    pose[0, 3:] = torch.from_numpy(jaw)
    moved = flame(torch.zeros(1, 100), torch.zeros(1, 50), pose)["vertices"][0].double().numpy()
    template = assets["v_template"]
    not_jaw = np.setdiff1d(np.arange(N_VERTS), JAW_VERTS)
    np.testing.assert_allclose(moved[not_jaw], template[not_jaw], atol=1e-6)
    # Jaw vertices: pose corrective of (R − I), then rotation about the jaw joint.
    rotation = Rotation.from_rotvec(jaw).as_matrix()
    corrective = assets["posedirs"][JAW_VERTS][:, :, JAW_POSE_COLUMNS] @ (rotation - np.eye(3)).ravel()
    joint = template[JAW_VERTS].mean(0)
    expected = (template[JAW_VERTS] + corrective - joint) @ rotation.T + joint
    np.testing.assert_allclose(moved[JAW_VERTS], expected, atol=1e-5)
    assert np.abs(moved[JAW_VERTS] - template[JAW_VERTS]).max() > 0.05


def _bary(vertices: np.ndarray, faces: np.ndarray, face_ids: np.ndarray, bary: np.ndarray) -> np.ndarray:
    return np.stack([sum(w * vertices[faces[f, i]] for i, w in enumerate(b)) for f, b in zip(face_ids, bary)])


@pytest.mark.parametrize("yaw_degrees, contour_row", [(0, 0), (20.2, 20), (-10, 49), (-60, 78), (55, 39)])
def test_landmarks_are_hand_computed_barycentric_points(assets, yaw_degrees: float, contour_row: int) -> None:
    pose = torch.zeros(1, 6, dtype=torch.float32)
    pose[0, 1] = np.deg2rad(yaw_degrees)  # global rotation about the vertical axis
    pose[0, 3] = 0.2
    expression = torch.linspace(-1, 1, 50)[None]
    out = assets["flame"](torch.zeros(1, 100), expression, pose)
    vertices, faces, embedding = out["vertices"][0].double().numpy(), assets["faces"], assets["embedding"]
    contour = _bary(vertices, faces, embedding["dynamic_lmk_faces_idx"][contour_row].numpy(),
                    embedding["dynamic_lmk_bary_coords"][contour_row].numpy())
    inner = _bary(vertices, faces, embedding["static_lmk_faces_idx"], embedding["static_lmk_bary_coords"])
    full = _bary(vertices, faces, embedding["full_lmk_faces_idx"][0], embedding["full_lmk_bary_coords"][0])
    np.testing.assert_allclose(out["landmarks2d"][0].numpy(), np.concatenate([contour, inner]), atol=1e-5)
    np.testing.assert_allclose(out["landmarks3d"][0].numpy(), full, atol=1e-5)


def test_npz_cache_round_trip(assets, tmp_path) -> None:
    pkl = tmp_path / "generic_model.pkl"
    pkl.write_bytes((assets["folder"] / "generic_model.pkl").read_bytes())
    first = load_flame_model(pkl, cache=True)
    assert (tmp_path / "generic_model.npz").is_file()
    pkl.write_bytes(b"not read again: the cache is newer")
    os.utime(pkl, (0, 0))
    second = load_flame_model(pkl, cache=True)
    np.testing.assert_array_equal(first.shapedirs, second.shapedirs)
    np.testing.assert_array_equal(first.J_regressor, second.J_regressor)


class RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_pickle_that_runs_code_is_refused(tmp_path) -> None:
    marker = tmp_path / "ran"
    model = {"v_template": np.zeros((3, 3)), "shapedirs": RunsCode(marker)}
    evil = tmp_path / "generic_model.pkl"
    evil.write_bytes(pickle.dumps(model, protocol=2))
    with pytest.raises(EmodiffError, match=r"refers to '(posix|os|nt)\.system'.*nothing in it was run"):
        load_flame_model(evil)
    evil_embedding = tmp_path / "landmark_embedding.npy"
    np.save(evil_embedding, {"static_lmk_faces_idx": RunsCode(marker)}, allow_pickle=True)
    with pytest.raises(EmodiffError, match="system"):
        load_landmark_embedding(evil_embedding)
    assert not marker.exists()


def test_missing_and_wrong_files_are_explained(assets, tmp_path) -> None:
    with pytest.raises(EmodiffError, match=r"generic_model\.pkl not found.*flame\.is\.tue\.mpg\.de"):
        load_flame_model(tmp_path / "generic_model.pkl")
    with pytest.raises(EmodiffError, match=r"deca_model\.tar not found.*github\.com/YadiraF/DECA"):
        load_deca_encoder(tmp_path / "deca_model.tar")
    (tmp_path / "partial.pkl").write_bytes(pickle.dumps({"v_template": np.zeros((3, 3))}, protocol=2))
    with pytest.raises(EmodiffError, match="lacks shapedirs, posedirs"):
        load_flame_model(tmp_path / "partial.pkl")
    truncated = tmp_path / "truncated.pkl"
    truncated.write_bytes((assets["folder"] / "generic_model.pkl").read_bytes()[:5000])
    with pytest.raises(EmodiffError, match=r"truncated\.pkl is not a readable FLAME/DECA asset"):
        load_flame_model(truncated)
    flame_dir = tmp_path / "flame"
    flame_dir.mkdir()
    (flame_dir / "generic_model.pkl").write_bytes((assets["folder"] / "generic_model.pkl").read_bytes())
    torch.save({"E_flame": DecaEncoder(4, 8).state_dict()}, tmp_path / "deca_model.tar")
    with pytest.raises(EmodiffError, match=r"landmark_embedding\.npy not found.*YadiraF/DECA"):
        DecaExpressionExtractor(tmp_path / "deca_model.tar", flame_dir / "generic_model.pkl")


OFFICIAL_KEYS = ["encoder.conv1.weight", "encoder.bn1.running_var", "encoder.layer1.0.conv1.weight",
                 "encoder.layer1.0.downsample.0.weight", "encoder.layer1.0.downsample.1.running_mean",
                 "encoder.layer2.3.bn3.weight", "encoder.layer3.5.conv2.weight", "encoder.layer4.2.conv3.weight",
                 "layers.0.weight", "layers.0.bias", "layers.2.weight", "layers.2.bias"]


def test_encoder_has_deca_parameter_names_and_full_size() -> None:
    keys = list(DecaEncoder(width=4, hidden=16).state_dict())
    assert set(OFFICIAL_KEYS) <= set(keys) and len(keys) == 322
    assert not any(k.startswith(("encoder.fc", "fc.")) for k in keys)
    full = DecaEncoder()
    assert full.layers[0].in_features == 2048 and full.layers[2].out_features == sum(CODE_SPLIT.values()) == 236
    assert sum(p.numel() for p in full.encoder.parameters()) == 23_508_032  # ResNet-50 without its classifier


def test_deca_checkpoint_loads_strictly_and_reproduces_outputs(tmp_path) -> None:
    model = tiny_encoder()
    checkpoint = {"E_flame": model.state_dict(), "E_detail": tiny_encoder(1).state_dict(),
                  "D_detail": {"layers.0.weight": torch.zeros(2)}}
    torch.save(checkpoint, tmp_path / "deca_model.tar")
    loaded = load_deca_encoder(tmp_path / "deca_model.tar")
    images = torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), model(images))
    parts = DecaEncoder.split(model(images).detach())
    assert {k: v.shape[1] for k, v in parts.items()} == {**CODE_SPLIT, "light": 9}


def test_mismatched_checkpoint_names_the_keys(tmp_path) -> None:
    state = tiny_encoder().state_dict()
    state.pop("encoder.layer3.2.bn2.weight")
    state["encoder.fc.weight"] = torch.zeros(3)
    state["layers.2.bias"] = torch.zeros(100)
    torch.save({"E_flame": state}, tmp_path / "deca_model.tar")
    with pytest.raises(EmodiffError) as error:
        load_deca_encoder(tmp_path / "deca_model.tar")
    message = str(error.value)
    assert "missing keys: encoder.layer3.2.bn2.weight" in message
    assert "unexpected keys: encoder.fc.weight" in message
    assert "layers.2.bias (100,) vs (236,)" in message


def test_checkpoint_that_runs_code_is_refused(tmp_path) -> None:
    marker = tmp_path / "ran"
    torch.save({"E_flame": RunsCode(marker)}, tmp_path / "deca_model.tar")
    with pytest.raises(EmodiffError, match=r"weights_only=True"):
        load_deca_encoder(tmp_path / "deca_model.tar")
    assert not marker.exists()


def test_crop_matches_deca_similarity_warp() -> None:
    rng = np.random.default_rng(3)
    frame = rng.integers(0, 256, (180, 200, 3), dtype=np.uint8)
    landmarks = rng.uniform([10, 60], [150, 175], (1, 68, 2))  # the crop reaches past the frame
    left, top, size = crop_boxes(landmarks)[0]
    low, high = landmarks[0].min(0), landmarks[0].max(0)
    assert size == int((high - low).sum() / 2 * 1.1 * 1.25)
    assert np.allclose([left + size / 2, top + size / 2], (low + high) / 2)
    # DECA's warp sends the box corners to output pixels 0 and 223: src = corner + dst · size / 223.
    rows, cols = np.meshgrid(top + np.arange(224) * size / 223, left + np.arange(224) * size / 223, indexing="ij")
    expected = np.stack([map_coordinates(frame[..., c] / 255, [rows, cols], order=1) for c in range(3)], -1)
    ours = crop_faces(torch.from_numpy(frame).permute(2, 0, 1)[None].float() / 255,
                      torch.tensor([[left, top, size]]))[0].permute(1, 2, 0).numpy()
    inside = (rows >= 0) & (rows <= 179) & (cols >= 0) & (cols <= 199)
    beyond = (rows < -1) | (rows > 180) | (cols < -1) | (cols > 200)
    assert inside.mean() > 0.5 and beyond.mean() > 0.05
    assert np.abs(ours - expected)[inside].max() < 1e-4
    assert np.all(ours[beyond] == 0)  # zeros outside the frame, as DECA's warp


def test_extractor_reports_code_parts_and_reprojection_error(assets, tmp_path) -> None:
    """A checkpoint whose head outputs a fixed code: the extractor returns its expression and poses,
    and input landmarks equal to the fit's own projection re-project with zero error."""
    flame = assets["flame"]
    expression = torch.linspace(-0.5, 0.5, 50)[None]
    reference = flame(torch.zeros(1, 100), expression, torch.zeros(1, 6))["landmarks2d"][0, :, :2].double().numpy()
    landmarks = 120 + 60 * reference * [1, -1]  # the fit's landmarks placed in a 256² frame
    box = crop_boxes(landmarks[None])
    target = ((landmarks - box[0, :2]) * 223 / box[0, 2]) / 112 - 1
    # The camera that maps the FLAME landmarks onto the target: u = s(x + tx), −v = s(y + ty).
    source, goal = reference, target * [1, -1]
    scale = ((source - source.mean(0)) * (goal - goal.mean(0))).sum() / ((source - source.mean(0)) ** 2).sum()
    shift = goal.mean(0) / scale - source.mean(0)
    code = torch.zeros(236)
    code[150:200] = expression[0]
    code[200:206] = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    code[206:209] = torch.tensor([scale, *shift])
    model = tiny_encoder()
    model.layers[2].weight.data.zero_()
    model.layers[2].bias.data.copy_(code)
    torch.save({"E_flame": model.state_dict()}, tmp_path / "deca_model.tar")
    extractor = DecaExpressionExtractor(tmp_path / "deca_model.tar", assets["folder"] / "generic_model.pkl",
                                        batch_size=2)
    frames = np.random.default_rng(4).integers(0, 256, (3, 256, 256, 3), dtype=np.uint8)
    moved = np.repeat(landmarks[None], 3, 0)
    moved[2, 30] += [0, 6]  # nose tip 6 px lower: inside the box, so the crop is unchanged
    with pytest.raises(EmodiffError, match=r"landmarks \(T, 68, 2\)"):
        extractor.extract(frames, moved[:2])
    out = extractor.extract(frames, moved)
    assert {k: v.shape for k, v in out.items()} == {"expression": (3, 50), "jaw_pose": (3, 3),
                                                   "global_pose": (3, 3), "reprojection_error": (3,)}
    np.testing.assert_allclose(out["expression"], np.repeat(expression.numpy(), 3, 0), atol=1e-6)
    assert np.abs(out["jaw_pose"]).max() == 0 and np.abs(out["global_pose"]).max() == 0
    np.testing.assert_allclose(out["reprojection_error"][:2], 0, atol=1e-5)
    np.testing.assert_allclose(out["reprojection_error"][2], 6 * 223 / box[0, 2] / 112 / 68, rtol=1e-4)
    projected = orthographic_project(flame(torch.zeros(1, 100), expression, torch.zeros(1, 6))["landmarks2d"],
                                     torch.tensor([[scale, *shift]], dtype=torch.float32))[0].numpy()
    np.testing.assert_allclose(projected, target, atol=1e-5)


def test_overlay_png_without_pytorch3d(assets, tmp_path) -> None:
    import matplotlib.pyplot as plt

    torch.save({"E_flame": tiny_encoder().state_dict()}, tmp_path / "deca_model.tar")
    extractor = DecaExpressionExtractor(tmp_path / "deca_model.tar", assets["folder"] / "generic_model.pkl")
    frame = np.full((160, 160, 3), 128, np.uint8)
    landmarks = np.random.default_rng(5).uniform(50, 110, (68, 2))
    path = extractor.save_overlay(frame, landmarks, tmp_path / "overlay.png")
    image = (plt.imread(path)[..., :3] * 255).round().astype(np.uint8)
    assert image.shape == (224, 224, 3)
    green = np.all(image == [40, 200, 60], axis=-1).sum()
    assert green > 68  # the input landmarks are drawn (the FLAME ones wherever they project)


@pytest.mark.parametrize("name", ["generic_model.pkl", "landmark_embedding.npy", "deca_model.tar"])
def test_official_file_when_available(name: str) -> None:
    """With EMODIFF_DECA_DATA pointing at a folder holding the official files, each loads as described."""
    folder = os.environ.get("EMODIFF_DECA_DATA")
    if not folder or not (Path(folder) / name).is_file():
        pytest.skip(f"EMODIFF_DECA_DATA does not hold {name}")
    path = Path(folder) / name
    if name == "generic_model.pkl":
        model = load_flame_model(path)
        assert model.v_template.shape == (5023, 3) and model.shapedirs.shape == (5023, 3, 400)
        assert model.posedirs.shape == (5023, 3, 36) and model.J_regressor.shape == (5, 5023)
        assert model.parents.tolist() == PARENTS
    elif name == "landmark_embedding.npy":
        embedding = load_landmark_embedding(path)
        assert embedding.dynamic_faces.shape == (79, 17) and embedding.static_faces.shape == (51,)
        assert embedding.full_faces.shape == (68,) and np.allclose(embedding.full_bary.sum(1), 1, atol=1e-4)
    else:
        encoder = load_deca_encoder(path)
        assert encoder(torch.rand(1, 3, 224, 224)).shape == (1, 236)


def test_official_contour_stays_on_the_visible_side() -> None:
    """With the official FLAME model and DECA embedding: as the head turns (±30°), the chosen jaw
    contour stays on camera-facing surface (the other yaw sign would put it on the back)."""
    folder = Path(os.environ.get("EMODIFF_DECA_DATA", "/nonexistent"))
    if not all((folder / name).is_file() for name in ("generic_model.pkl", "landmark_embedding.npy")):
        pytest.skip("EMODIFF_DECA_DATA does not hold generic_model.pkl and landmark_embedding.npy")
    flame = Flame(load_flame_model(folder / "generic_model.pkl"), load_landmark_embedding(folder / "landmark_embedding.npy"))
    for yaw in (-30.0, 30.0):
        pose = torch.zeros(1, 6)
        pose[0, 1] = np.deg2rad(yaw)
        vertices = flame(torch.zeros(1, 100), torch.zeros(1, 50), pose)["vertices"][0]
        corners = vertices[flame.faces]
        normals = torch.linalg.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
        contour_faces = flame.dynamic_faces[flame.contour_bins(flame.full_pose(pose))[0]]
        assert (normals[contour_faces, 2] > 0).float().mean() > 0.9
