"""The clip store: the contract between `prepare` and everything else (docs/design.md §3).

```
<store>/manifest.jsonl         one JSON line per processed source; the last line for an id wins
<store>/clips/<clip_id>/       frames.npy, audio.wav, audio_feats.npy, landmarks.npy,
                               expression.npy, intensity.npy, meta.json
<store>/stats/                 store-level statistics (expression basis, normalisation, ...)
```
A clip directory is written under a temporary name and renamed when complete, so a crash never
leaves a half clip that looks complete. Arrays are read memory-mapped.
"""

from __future__ import annotations

import json
import os
import shutil
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from emodiff.data.media import SAMPLE_RATE
from emodiff.errors import EmodiffError
from emodiff.files import save_npy_atomic, write_json_atomic

ARRAY_NAMES = ("frames", "audio_feats", "landmarks", "expression", "intensity")
_DTYPES = {
    "frames": np.uint8,
    "audio_feats": np.float16,
    "landmarks": np.float32,
    "expression": np.float32,
    "intensity": np.float32,
}


def write_wav(path: Path, audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    """16-bit PCM mono wav from float samples in [-1, 1]."""
    pcm = (np.clip(np.asarray(audio, dtype=np.float32), -1.0, 1.0) * 32767.0).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(pcm.tobytes())


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    """Read a 16-bit PCM wav written by `write_wav` as float32 mono and its sample rate."""
    with wave.open(str(path), "rb") as w:
        rate, channels, width = w.getframerate(), w.getnchannels(), w.getsampwidth()
        data = w.readframes(w.getnframes())
    if width != 2:
        raise EmodiffError(f"{path} is not 16-bit PCM; read it with emodiff.data.media instead.")
    audio = np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0
    return audio.reshape(-1, channels).mean(axis=1), rate


@dataclass
class Clip:
    """One prepared clip; arrays are memory-mapped on first access."""

    clip_id: str
    path: Path
    meta: dict[str, Any] = field(repr=False)

    def _load(self, name: str) -> np.ndarray:
        return np.load(self.path / f"{name}.npy", mmap_mode="r")

    @property
    def frames(self) -> np.ndarray:
        return self._load("frames")

    @property
    def audio_feats(self) -> np.ndarray | None:
        return self._load("audio_feats") if self.has_audio else None

    @property
    def landmarks(self) -> np.ndarray:
        return self._load("landmarks")

    @property
    def expression(self) -> np.ndarray:
        return self._load("expression")

    @property
    def intensity(self) -> np.ndarray:
        return self._load("intensity")

    @property
    def has_audio(self) -> bool:
        return (self.path / "audio_feats.npy").exists()

    @property
    def n_frames(self) -> int:
        return int(self.meta["n_frames"])

    @property
    def emotion(self) -> str | None:
        return self.meta.get("emotion")

    @property
    def level(self) -> int | None:
        return self.meta.get("level")

    @property
    def identity(self) -> str | None:
        return self.meta.get("identity")

    def audio(self) -> tuple[np.ndarray, int]:
        return read_wav(self.path / "audio.wav")


class ClipStore:
    """A folder of prepared clips plus a manifest (docs/design.md §3)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.manifest_path = self.root / "manifest.jsonl"
        self.clips_dir = self.root / "clips"
        self.stats_dir = self.root / "stats"

    @classmethod
    def create(cls, root: str | Path) -> "ClipStore":
        store = cls(root)
        store.clips_dir.mkdir(parents=True, exist_ok=True)
        store.stats_dir.mkdir(parents=True, exist_ok=True)
        store.manifest_path.touch(exist_ok=True)
        return store

    @classmethod
    def open(cls, root: str | Path) -> "ClipStore":
        store = cls(root)
        if not store.manifest_path.is_file():
            raise EmodiffError(f"{root} is not a clip store (no manifest.jsonl); create one with `emodiff prepare`.")
        return store

    # -- manifest -------------------------------------------------------------------------
    def manifest(self) -> dict[str, dict[str, Any]]:
        """Latest manifest entry per id (the file is append-only; later lines win)."""
        entries: dict[str, dict[str, Any]] = {}
        if not self.manifest_path.exists():
            return entries
        with open(self.manifest_path) as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut by a crash; the clip is re-processed on resume
                entries[entry["id"]] = entry
        return entries

    def append_manifest(self, entry: dict[str, Any]) -> None:
        """Append one entry as a single write (atomic for lines shorter than PIPE_BUF).

        A line torn by an earlier crash is closed first, so it cannot swallow this entry.
        """
        line = (json.dumps(entry, sort_keys=True, default=str) + "\n").encode()
        fd = os.open(self.manifest_path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                line = b"\n" + line
            os.write(fd, line)
        finally:
            os.close(fd)

    def clip_ids(self, status: str = "ok") -> list[str]:
        """Ids whose latest manifest entry has `status` and whose clip directory is complete."""
        return sorted(
            cid for cid, e in self.manifest().items()
            if e.get("status") == status and (status != "ok" or self.is_complete(cid))
        )

    # -- clips ----------------------------------------------------------------------------
    def clip_path(self, clip_id: str) -> Path:
        return self.clips_dir / clip_id

    def is_complete(self, clip_id: str) -> bool:
        return (self.clip_path(clip_id) / "meta.json").is_file()

    def clip(self, clip_id: str) -> Clip:
        path = self.clip_path(clip_id)
        if not (path / "meta.json").is_file():
            raise EmodiffError(f"Clip '{clip_id}' is missing or incomplete in {self.root}.")
        return Clip(clip_id, path, json.loads((path / "meta.json").read_text()))

    def clips(self) -> Iterator[Clip]:
        for cid in self.clip_ids():
            yield self.clip(cid)

    def write_clip(
        self,
        clip_id: str,
        arrays: dict[str, np.ndarray],
        meta: dict[str, Any],
        audio: np.ndarray | None = None,
    ) -> Clip:
        """Write a whole clip atomically: a temporary folder renamed into place.

        `arrays` holds any of ARRAY_NAMES (cast to the contract's dtypes); all must share T.
        `audio` is 16 kHz mono float32; meta.json is written last inside the temporary folder.
        """
        unknown = set(arrays) - set(ARRAY_NAMES)
        if unknown:
            raise ValueError(f"unknown clip arrays: {sorted(unknown)}")
        lengths = {name: len(a) for name, a in arrays.items()}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"clip arrays disagree on length: {lengths}")
        self.clips_dir.mkdir(parents=True, exist_ok=True)
        final = self.clip_path(clip_id)
        tmp = self.clips_dir / f".{clip_id}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for name, array in arrays.items():
            np.save(tmp / f"{name}.npy", np.ascontiguousarray(array, dtype=_DTYPES[name]))
        if audio is not None:
            write_wav(tmp / "audio.wav", audio)
        meta = {**meta, "n_frames": int(next(iter(lengths.values()), meta.get("n_frames", 0)))}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True, default=str))
        if final.exists():
            old = self.clips_dir / f".{clip_id}.old-{os.getpid()}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        return self.clip(clip_id)

    def update_clip(self, clip_id: str, arrays: dict[str, np.ndarray], meta_update: dict[str, Any]) -> None:
        """Replace some arrays of a finished clip (each file atomically), then its meta.json."""
        clip = self.clip(clip_id)
        for name, array in arrays.items():
            if name not in ARRAY_NAMES:
                raise ValueError(f"unknown clip array: {name}")
            if len(array) != clip.n_frames:
                raise ValueError(f"{name} has {len(array)} frames, clip has {clip.n_frames}")
            save_npy_atomic(clip.path / f"{name}.npy", np.ascontiguousarray(array, dtype=_DTYPES[name]))
        write_json_atomic(clip.path / "meta.json", {**clip.meta, **meta_update})

    def remove_partials(self) -> int:
        """Delete temporary folders left by crashed writers; returns how many were removed."""
        removed = 0
        if self.clips_dir.exists():
            for p in self.clips_dir.glob(".*.tmp-*"):
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
                removed += 1
        return removed
