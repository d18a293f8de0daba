"""EmoDiffPipeline by Hugging Face Hub id: offline loading from a Hub cache the test lays out, and push_to_hub
(docs/design.md §5.4). No test touches the network."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from huggingface_hub import HfApi
from huggingface_hub.errors import OfflineModeIsEnabled

import emodiff.pipeline
from emodiff.errors import EmodiffError
from emodiff.pipeline import EmoDiffPipeline
from tests.conftest import write_tiny_pipeline

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def hub_cache(cache: Path, repo_id: str) -> Path:
    """A tiny pipeline laid out as huggingface_hub's cache holds a model repo (`file_download.repo_folder_name`,
    `_snapshot_download`): models--org--name/snapshots/<commit>/… and refs/main naming that commit."""
    storage = cache / ("models--" + repo_id.replace("/", "--"))
    write_tiny_pipeline(storage / "snapshots" / COMMIT)
    (storage / "refs").mkdir()
    (storage / "refs" / "main").write_text(COMMIT)
    return storage / "snapshots" / COMMIT


@pytest.fixture
def offline(tmp_path, monkeypatch) -> Path:
    """HF_HUB_OFFLINE=1, the working directory empty (so "org/name" is no local folder), and a cache holding
    org/name; returns the cache folder."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    hub_cache(tmp_path / "cache", "org/name")
    return tmp_path / "cache"


def test_hub_id_loads_from_the_cache_offline(offline):
    snapshot = offline / "models--org--name" / "snapshots" / COMMIT
    loaded = EmoDiffPipeline.from_pretrained("org/name", cache_dir=offline)
    assert loaded.settings == EmoDiffPipeline.from_pretrained(snapshot).settings
    assert EmoDiffPipeline.from_pretrained("org/name", revision=COMMIT, cache_dir=offline).settings == loaded.settings


def test_uncached_hub_id_offline_is_one_sentence(offline):
    with pytest.raises(EmodiffError) as caught:
        EmoDiffPipeline.from_pretrained("org/other", cache_dir=offline)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("org/other is neither a local folder nor a pipeline in the Hugging Face cache")
    assert "HF_HUB_OFFLINE" in message and "local folder" in message
    assert f"`hf download org/other --cache-dir {offline}`" in message


def test_local_folder_wins_over_a_hub_id(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_tiny_pipeline(tmp_path / "org" / "name")
    monkeypatch.setattr(emodiff.pipeline, "snapshot_download", lambda *a, **k: pytest.fail("asked the Hub"))
    assert EmoDiffPipeline.from_pretrained("org/name").settings["resolution"] == 16


def test_save_pretrained_pushes_the_saved_folder(tmp_path, monkeypatch):
    calls = []

    def upload_folder(self, *, repo_id, folder_path, commit_message):
        calls.append((repo_id, Path(folder_path), commit_message, (Path(folder_path) / "model_index.json").is_file()))

    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, private, exist_ok: SimpleNamespace(repo_id=repo_id))
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    pipeline = EmoDiffPipeline.from_pretrained(write_tiny_pipeline(tmp_path / "tiny"))
    pipeline.save_pretrained(tmp_path / "kept")
    assert calls == []
    pipeline.save_pretrained(tmp_path / "out", push_to_hub=True, repo_id="org/name")
    assert calls == [("org/name", tmp_path / "out", "Upload emodiff pipeline", True)]
    pipeline.save_pretrained(tmp_path / "mine", push_to_hub=True)
    assert calls[-1][0] == "mine"

    def offline_upload(self, **kwargs):
        raise OfflineModeIsEnabled("Cannot reach the Hub: offline mode is enabled.")

    monkeypatch.setattr(HfApi, "upload_folder", offline_upload)
    with pytest.raises(EmodiffError, match="was saved but not pushed to the Hugging Face Hub repo org/name"):
        pipeline.save_pretrained(tmp_path / "out", push_to_hub=True, repo_id="org/name")


def test_sample_cli_names_an_uncached_hub_id_in_one_sentence(offline, capsys):
    from emodiff.cli import main

    args = ["sample", "--checkpoint", "org/other", "--identity", "face.png", "--audio", "speech.wav",
            "--emotion", "happy", "--intensity", "0.5", "--out", "out.mp4"]
    assert main(args) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("emodiff: error: org/other is neither a local folder") and len(err.splitlines()) == 1
