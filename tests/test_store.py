import json

import numpy as np
import pytest
import torch

from emodiff.data.datasets import FrameDataset, SequenceDataset, region_mask, window_indices
from emodiff.data.labels import EMOTIONS, emotion_index, parse_label
from emodiff.data.store import ClipStore
from emodiff.errors import EmodiffError
from tests.conftest import write_random_store


def test_mead_labels_parse_from_both_layouts():
    lab = parse_label("/data/MEAD/M003/video/front/angry/level_3/001.mp4")
    assert (lab.identity, lab.emotion, lab.level) == ("M003", "angry", 3)
    lab = parse_label("W015_surprised_2_014.mp4")
    assert (lab.identity, lab.emotion, lab.level) == ("W015", "surprised", 2)
    assert parse_label("holiday.mp4").emotion is None
    assert parse_label("M003_bored_2_001.mp4").emotion is None


def test_unknown_emotion_lists_valid_ones():
    with pytest.raises(EmodiffError) as err:
        emotion_index("bored")
    assert all(e in str(err.value) for e in EMOTIONS)


def test_clip_write_is_atomic_and_latest_manifest_line_wins(tmp_path):
    store = write_random_store(tmp_path / "s", n_clips=2)
    # A crashed writer leaves a temporary folder and a torn manifest line: neither counts.
    (store.clips_dir / ".clip009.tmp-123").mkdir()
    with open(store.manifest_path, "a") as f:
        f.write('{"id": "clip009", "sta')
    store.append_manifest({"id": "clip001", "status": "failed", "error": "no face"})
    assert store.clip_ids() == ["clip000"]
    assert store.clip_ids("failed") == ["clip001"]
    assert store.remove_partials() == 1
    clip = store.clip("clip000")
    assert clip.frames.dtype == np.uint8 and isinstance(clip.frames, np.memmap)
    assert clip.audio_feats.dtype == np.float16
    audio, rate = clip.audio()
    assert rate == 16000 and len(audio) == 12 * 640


def test_update_clip_replaces_arrays_and_meta(tmp_path):
    store = write_random_store(tmp_path / "s", n_clips=1)
    store.update_clip("clip000", {"intensity": np.full(12, 0.5)}, {"intensity_source": "test"})
    clip = store.clip("clip000")
    assert np.allclose(clip.intensity, 0.5)
    assert json.loads((clip.path / "meta.json").read_text())["intensity_source"] == "test"
    with pytest.raises(ValueError):
        store.update_clip("clip000", {"intensity": np.zeros(3)}, {})


def test_frame_dataset_pads_motion_with_identity_at_start(tmp_path):
    store = write_random_store(tmp_path / "s", n_clips=2, n_frames=10, size=16)
    ds = FrameDataset(store, window=2, resolution=8)
    assert len(ds) == 20
    first = ds[0]
    assert first["target"].shape == (3, 8, 8) and first["motion"].shape == (6, 8, 8)
    assert torch.equal(first["motion"][:3], first["identity"]) and torch.equal(first["motion"][3:], first["identity"])
    third = ds[2]
    frames = FrameDataset(store, window=2)  # native resolution: motion frames are exactly i−2, i−1
    item = frames[2]
    clip = store.clip("clip000")
    expect = torch.from_numpy(np.array(clip.frames[0:2])).float().div(127.5).sub(1).permute(0, 3, 1, 2)
    assert torch.allclose(item["motion"], expect.reshape(6, 16, 16))
    assert third["audio"].shape == (5, 8) and third["expression"].shape == (5, 6)
    assert first["emotion"].item() == 0 and ds[10]["emotion"].item() == 1


def test_windows_and_masks():
    assert window_indices(0, 2, 10).tolist() == [0, 0, 0, 1, 2]
    assert window_indices(9, 2, 10).tolist() == [7, 8, 9, 9, 9]
    mask = region_mask(np.array([[4.0, 4.0], [8.0, 6.0]]), 16)
    ys, xs = np.nonzero(mask)
    assert xs.min() <= 4 and xs.max() >= 8 and ys.min() <= 4 and ys.max() >= 6 and mask.sum() < 16 * 16


def test_sequence_dataset_filters_and_windows(tmp_path):
    store = write_random_store(tmp_path / "s", n_clips=3, n_frames=12)
    ds = SequenceDataset(store, length=5, stride=5, keep=lambda c: c.emotion != "neutral", require_audio=True)
    assert len(ds) == 4  # two clips, two windows each
    item = ds[0]
    assert item["expression"].shape == (5, 6) and item["audio"].shape == (5, 8) and item["level"].item() == 3


def test_open_missing_store_is_a_clear_error(tmp_path):
    with pytest.raises(EmodiffError, match="not a clip store"):
        ClipStore.open(tmp_path)


def test_frame_dataset_takes_the_identity_frame_from_a_neutral_clip_of_the_same_person(tmp_path):
    """identity_source="neutral": clip002 (id0, contempt) draws its identity frames from clip000 (id0, neutral);
    id1 has no neutral clip, so clip001 keeps its own frames. Motion padding at frame 0 is that identity frame."""
    store = write_random_store(tmp_path / "s", n_clips=4, n_frames=10, size=8)
    frames = {cid: torch.from_numpy(np.array(store.clip(cid).frames)).float().div(127.5).sub(1).permute(0, 3, 1, 2)
              for cid in store.clip_ids()}

    def source(image: torch.Tensor) -> list[str]:
        return [cid for cid, clip in frames.items() if any(torch.equal(image, frame) for frame in clip)]

    neutral = FrameDataset(store, identity_source="neutral")
    assert {tuple(source(neutral[i]["identity"])) for i in range(20, 30)} == {("clip000",)}
    assert {tuple(source(neutral[i]["identity"])) for i in range(10, 20)} == {("clip001",)}
    assert torch.equal(neutral[20]["motion"][3:], neutral[20]["identity"])
    same_clip = FrameDataset(store)
    assert {tuple(source(same_clip[i]["identity"])) for i in range(20, 30)} == {("clip002",)}
    with pytest.raises(ValueError, match="identity_source"):
        FrameDataset(store, identity_source="mirror")


def test_feature_statistics_are_the_per_dimension_moments_and_constant_dimensions_keep_unit_scale(tmp_path):
    store = write_random_store(tmp_path / "s", n_clips=3, n_frames=10)
    for cid in store.clip_ids():
        expression = np.array(store.clip(cid).expression)
        expression[:, 0] = 3.0
        store.update_clip(cid, {"expression": expression}, {})
    ds = FrameDataset(store)
    every = {name: np.concatenate([np.asarray(getattr(store.clip(c), name), np.float64) for c in store.clip_ids()])
             for name in ("audio_feats", "expression")}
    mean, std = ds.feature_statistics("audio_feats")
    np.testing.assert_allclose(mean, every["audio_feats"].mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(std, every["audio_feats"].std(0), rtol=1e-5)
    mean, std = ds.feature_statistics("expression")
    assert mean[0] == pytest.approx(3.0) and std[0] == 1.0
    np.testing.assert_allclose(std[1:], every["expression"][:, 1:].std(0), rtol=1e-5)
