"""The form of `emodiff app` as plain functions, without the browser: form values → schedule specs, the live schedule
preview, the example faces and speech, and the sampling job with the `emodiff sample` command that reproduces it.

The app (`emodiff/app.py`) is a thin Gradio layer over this module; nothing here imports Gradio. The form's rows
become the command line's specs (`timeline_spec`, `intensity_spec`) and are checked by the same functions as
`emodiff sample` (`emodiff.control.schedule`), so the app shows the command line's sentences. A `SampleJob` runs
the job and settings of its `emodiff sample` command with that command's functions (`prepare_video`,
`sample_batch`), so the command it shows makes the same video.
"""

from __future__ import annotations

import shutil
import threading
import zipfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from emodiff.control import ScheduleOptions, plot_schedule
from emodiff.control.schedule import emotion_weights, intensity_schedule
from emodiff.data.audio_features import check_speech, extract_audio_features, n_video_frames
from emodiff.data.media import load_audio, read_video
from emodiff.data.store import write_wav
from emodiff.data.synthetic import render_origin, save_render, trained_world, unseen_identities
from emodiff.demo import SECONDS, demo_world, enlarge, sheet_frames, write_contact_sheet
from emodiff.errors import EmodiffError
from emodiff.pipeline import EmoDiffPipeline
from emodiff.data.datasets import to_uint8
from emodiff.files import write_text_atomic
from emodiff.sample import OUTPUT, SampleRequest, identity_warning, prepare_video, sample_batch

INTENSITY_MODES = ("constant", "key frames", "from the voice")
PREVIEW_SECONDS = SECONDS  # the preview's length until speech is given
EXAMPLE_FACES = 4
SHEET, COMMAND, ARCHIVE = "contact_sheet.png", "command.txt", "talking_head.zip"


def _cell(value: object) -> str:
    """A table cell as command-line text: numbers without trailing zeros, text stripped, blanks empty."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    if isinstance(value, (int, float, np.number)):
        return f"{float(value):g}"
    return str(value).strip()


def _rows(table: Sequence[Sequence[object]] | None) -> list[tuple[str, str]]:
    """The non-blank (first, second) cells of a two-column table."""
    cells = [(_cell(row[0]), _cell(row[1]) if len(row) > 1 else "") for row in (table or [])]
    return [(a, b) for a, b in cells if a or b]


def timeline_spec(rows: Sequence[Sequence[object]] | None) -> str:
    """Rows (emotion, start seconds) → the `--emotion` spec `"happy@0,surprised@2"`; blank rows are skipped."""
    items = [f"{emotion}@{start}" for emotion, start in _rows(rows)]
    if not items:
        raise EmodiffError("The emotion timeline is empty; add a row with an emotion and its start time, e.g. happy at 0 s.")
    return ",".join(items)


def intensity_spec(mode: str, constant: float, keyframe_rows: Sequence[Sequence[object]] | None) -> str:
    """The `--intensity` spec of the form: the constant, the key frames `"0:0.2,1.5:0.9"` (rows of time, k) or `audio`."""
    if mode == "constant":
        return _cell(constant)
    if mode == "key frames":
        keys = [f"{time}:{k}" for time, k in _rows(keyframe_rows)]
        if not keys:
            raise EmodiffError("The key frames are empty; add rows of time (s) and k, e.g. 0 and 0.2, then 2 and 0.9.")
        return ",".join(keys)
    if mode == "from the voice":
        return "audio"
    raise EmodiffError(f"Unknown intensity mode '{mode}'; choose one of: {', '.join(INTENSITY_MODES)}.")


@lru_cache(maxsize=8)
def _speech(path: str) -> np.ndarray:
    """16 kHz mono speech of an uploaded file (uploads get fresh paths, so the cache never goes stale)."""
    audio = load_audio(path)
    check_speech(audio, f"The speech {Path(path).name}")
    return audio


@dataclass(frozen=True)
class SchedulePreview:
    """The schedule plot (None when the intensity cannot be drawn) and a sentence per field that has a problem."""

    plot: Path | None
    speech_error: str | None = None
    emotion_error: str | None = None
    intensity_error: str | None = None
    length: str = ""


def preview_schedule(pipeline: EmoDiffPipeline, speech: str | None, timeline_rows: Sequence[Sequence[object]] | None,
                     mode: str, constant: float, keyframe_rows: Sequence[Sequence[object]] | None,
                     options: ScheduleOptions, plot: Path) -> SchedulePreview:
    """Check the form's schedule over the speech's length (PREVIEW_SECONDS before there is speech) and draw it to
    `plot`; each field's problem is the sentence `emodiff sample` would print for it."""
    fps = pipeline.settings["fps"]
    speech_error = emotion_error = intensity_error = None
    audio = None
    if speech:
        try:
            audio = _speech(speech)
        except EmodiffError as err:
            speech_error = str(err)
    n_frames = n_video_frames(len(audio), fps) if audio is not None else int(round(PREVIEW_SECONDS * fps))
    length = f"over the {n_frames / fps:.2f} s of the speech" if audio is not None else \
        f"over {PREVIEW_SECONDS:g} s until speech is given"
    weights = k = None
    try:
        emotion = timeline_spec(timeline_rows)
        weights = emotion_weights(emotion, n_frames, fps, options)
    except EmodiffError as err:
        emotion_error = str(err)
    try:
        intensity = intensity_spec(mode, constant, keyframe_rows)
        features = None
        if intensity == "audio":
            if audio is None:
                raise EmodiffError("An intensity from the voice needs speech; give it above.")
            features = extract_audio_features(audio, fps, kind=pipeline.settings["audio_features"],
                                              model=pipeline.settings["audio_model"])
        k = intensity_schedule(intensity, n_frames, fps, options, features, pipeline.intensity_predictor)
    except EmodiffError as err:
        intensity_error = str(err)
    if k is not None:
        plot_schedule(k, fps, plot, weights)
    return SchedulePreview(plot if k is not None else None, speech_error, emotion_error, intensity_error, length)


def face_warning(checkpoint: Path, face: str | None) -> str | None:
    """`emodiff sample`'s warning for a face this pipeline cannot animate (a photo for a synthetic-world pipeline)."""
    if not face:
        return None
    return identity_warning(checkpoint, face, render_origin(face) is not None)


def write_examples(checkpoint: Path, folder: Path) -> tuple[list[Path], list[Path]]:
    """Example faces and speech of the synthetic world the pipeline was trained in, written to `folder`: portraits of
    EXAMPLE_FACES identities it never saw (`save_render`, so `emodiff sample` knows them) and PREVIEW_SECONDS of
    calm and of rising synthetic speech. A pipeline trained on other data gets none (the world is not its domain)."""
    description = trained_world(checkpoint)
    if description is None:
        return [], []
    folder.mkdir(parents=True, exist_ok=True)
    fps = float(description.get("fps", 25))
    world = demo_world(checkpoint, int(description.get("size", 32)), fps)
    faces = [save_render(folder / f"face_syn{index:04d}.png", world, index)
             for index in unseen_identities(description, EXAMPLE_FACES)]
    n_frames = int(round(PREVIEW_SECONDS * fps))
    speech = []
    for name, k in (("calm", np.full(n_frames, 0.2)), ("rising", np.linspace(0.0, 1.0, n_frames))):
        audio, _ = world.speech(n_frames, k, np.random.default_rng(len(speech)))
        write_wav(folder / f"speech_{name}.wav", audio)
        speech.append(folder / f"speech_{name}.wav")
    return faces, speech


class SampleJob:
    """One request run in its own folder the way `emodiff sample` runs it; construction copies the inputs and
    prepares the conditions (a bad input is an `EmodiffError` here, before any frame), `run()` samples."""

    def __init__(self, pipeline: EmoDiffPipeline, checkpoint: Path, request: SampleRequest, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        for source, name in zip((request.face, request.speech), request.input_names()):
            if not source.is_file():
                raise EmodiffError(f"The file {source.name} is no longer on the server; give it again.")
            shutil.copyfile(source, folder / name)
        self.pipeline, self.folder, self.command = pipeline, folder, request.command(checkpoint)
        self.job, self.settings = request.job(folder), request.settings(checkpoint)
        self.video, self.audio, _ = prepare_video(pipeline, self.job, self.settings)
        self.warning = face_warning(checkpoint, str(request.face))  # names the user's file, not the folder's copy
        self.paths = {"video": folder / OUTPUT, "schedule": (folder / OUTPUT).with_suffix(".intensity.png"),
                      "sheet": folder / SHEET, "command": folder / COMMAND, "archive": folder / ARCHIVE}

    @property
    def n_frames(self) -> int:
        return self.video.n_frames

    def run(self) -> Iterator[int]:
        """Sample frame by frame, yielding how many frames are done; after the last, write the contact sheet,
        command.txt and the zip of the video, schedule plot, contact sheet, command and inputs. Closing the
        generator early (a cancel) leaves no mp4."""
        for i in sample_batch(self.pipeline, [self.job], [self.video], [self.audio], self.settings):
            yield i + 1
        fps = self.pipeline.settings["fps"]
        picks = sheet_frames(self.n_frames)
        frames = {i: enlarge(frame) for i, frame in enumerate(read_video(self.paths["video"], fps)) if i in picks}
        write_contact_sheet(self.paths["sheet"], enlarge(to_uint8(self.video.identity)), frames,
                            self.video.intensity.numpy(), self.video.emotion_weights.numpy(), fps)
        write_text_atomic(self.paths["command"], "# run in this folder (the unzipped download):\n" + self.command + "\n")
        members = [Path(self.job.identity), Path(self.job.audio),
                   *(self.paths[key] for key in ("video", "schedule", "sheet", "command"))]
        partial = self.paths["archive"].with_suffix(".zip.partial")
        with zipfile.ZipFile(partial, "w") as archive:
            for path in members:
                archive.write(path, path.name)
        partial.replace(self.paths["archive"])


class Cancellations:
    """The app's Cancel button, per browser session: `submitted` when a session asks for a video, `cancel` when it
    clicks Cancel (True if it has a request to cancel, queued or running), `is_cancelled` checked by the job before it
    starts and after every frame, `finished` when the request ends. Thread-safe (jobs run in worker threads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._active: set[str] = set()
        self._cancelled: set[str] = set()

    def submitted(self, session: str) -> None:
        with self._lock:
            self._active.add(session)
            self._cancelled.discard(session)

    def cancel(self, session: str) -> bool:
        with self._lock:
            if session in self._active:
                self._cancelled.add(session)
            return session in self._active

    def is_cancelled(self, session: str) -> bool:
        with self._lock:
            return session in self._cancelled

    def finished(self, session: str) -> None:
        with self._lock:
            self._active.discard(session)
            self._cancelled.discard(session)
