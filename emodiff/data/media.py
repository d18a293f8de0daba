"""Video and audio I/O with PyAV (FFmpeg's libraries; no ffmpeg binary needed).

- `probe(path)`: duration, frame rate, size and whether there is audio.
- `read_video(path, fps)`: a generator of RGB uint8 frames resampled to `fps`.
- `load_audio(path)`: any audio FFmpeg decodes (a video's soundtrack, wav, mp3, m4a, flac; any
  rate, any channel count) as float32 mono at 16 kHz.
- `VideoWriter(path, fps, audio)`: streams frames into an H.264 (yuv420p) mp4 with AAC audio muxed;
  written under a temporary name and renamed on success, removed on error.

Frame-rate resampling rule (`read_video`): time is measured from the video stream's start.
Output frame i stands for time t_i = i / fps and shows the latest decoded frame whose presentation
timestamp is ≤ t_i (before the first decoded frame: the first frame). The output has
T = round(duration × fps) frames, duration being the video stream's duration (the last frame is
repeated up to it). Only timestamps are used, never frame counts, so variable-frame-rate sources
are resampled correctly.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import Iterator

import av
import numpy as np

from emodiff.errors import EmodiffError

SAMPLE_RATE = 16_000


@dataclass(frozen=True)
class MediaInfo:
    """What `probe` reports about a media file; video fields are None when it has no video."""

    path: Path
    duration: float
    fps: float | None
    width: int | None
    height: int | None
    has_audio: bool
    comment: str | None = None  # the container's comment tag (emodiff sample records its super-resolution there)

    @property
    def has_video(self) -> bool:
        return self.fps is not None


def _open(path: str | Path) -> av.container.InputContainer:
    path = Path(path)
    if not path.is_file():
        raise EmodiffError(f"Media file {path} does not exist.")
    try:
        return av.open(str(path))
    except av.FFmpegError as err:
        raise EmodiffError(f"Cannot read {path}: FFmpeg does not recognise it as media ({err.strerror}).") from None


def _stream_duration(container: av.container.InputContainer, stream: av.stream.Stream) -> float | None:
    """The stream's duration in seconds from the container metadata, or None if unrecorded."""
    if stream.duration is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        start = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
        return container.duration / av.time_base - start
    return None


def probe(path: str | Path) -> MediaInfo:
    """Duration (s), average frame rate, display size (upright) and audio presence of a media file.

    A video whose duration is not recorded (a raw elementary stream) is decoded once to measure it.
    """
    with _open(path) as container:
        video = container.streams.video[0] if container.streams.video else None
        audio = container.streams.audio[0] if container.streams.audio else None
        if video is None and audio is None:
            raise EmodiffError(f"Cannot read {path}: it has neither a video nor an audio stream.")
        duration = _stream_duration(container, video or audio)
        if video is None:
            if duration is None:
                raise EmodiffError(f"Cannot read {path}: its duration is not recorded in the file.")
            return MediaInfo(Path(path), duration, None, None, None, True, container.metadata.get("comment"))
        frames = _timed_frames(path, container, video)
        _, first = next(frames, (None, None))
        if first is None:
            raise EmodiffError(f"Cannot read {path}: its video stream has no decodable frames.")
        height, width = _to_rgb(first).shape[:2]
        if duration is None:
            last = max((time for time, _ in frames), default=Fraction(0))
            duration = float(last + _frame_interval(video))
        return MediaInfo(Path(path), duration, float(1 / _frame_interval(video)), width, height, audio is not None,
                         container.metadata.get("comment"))


def _frame_interval(stream: av.video.stream.VideoStream) -> Fraction:
    """The nominal time between frames: 1 / average rate (25 fps if the file does not say)."""
    return 1 / Fraction(stream.average_rate or stream.guessed_rate or 25)


def _timed_frames(path: str | Path, container: av.container.InputContainer,
                  stream: av.video.stream.VideoStream) -> Iterator[tuple[Fraction, av.VideoFrame]]:
    """Decoded frames with their presentation time in seconds from the stream's start; a frame
    without a timestamp (raw elementary streams) comes one nominal interval after the previous one."""
    start = stream.start_time * stream.time_base if stream.start_time is not None else None
    time: Fraction | None = None
    try:
        for frame in container.decode(stream):
            if frame.pts is not None:
                time = frame.pts * frame.time_base
            else:
                time = Fraction(0) if time is None else time + _frame_interval(stream)
            start = time if start is None else start
            yield time - start, frame
    except av.FFmpegError as err:
        raise EmodiffError(f"Cannot decode {path}: the video data is damaged ({err.strerror}).") from None


def _to_rgb(frame: av.VideoFrame) -> np.ndarray:
    """RGB uint8 (H, W, 3), turned upright when the file carries a display rotation."""
    image = frame.to_ndarray(format="rgb24")
    quarter_turns = round(frame.rotation / 90) % 4
    return np.ascontiguousarray(np.rot90(image, quarter_turns)) if quarter_turns else image


def read_video(path: str | Path, fps: float = 25.0) -> Iterator[np.ndarray]:
    """Stream the frames of `path` as RGB uint8 (H, W, 3) resampled to `fps` (module docstring rule).

    Only the current and the previous decoded frame are held, so memory does not grow with length.
    """
    target = Fraction(fps).limit_denominator(1001)
    if target <= 0:
        raise EmodiffError(f"The frame rate must be positive, got {fps}.")
    with _open(path) as container:
        if not container.streams.video:
            raise EmodiffError(f"Cannot read {path}: it has no video stream.")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        duration = _stream_duration(container, stream)
        total = round(duration * target) if duration is not None else None
        emitted = 0
        previous: np.ndarray | None = None
        last_time = Fraction(0)
        for last_time, frame in _timed_frames(path, container, stream):
            image = _to_rgb(frame)
            # Output frames strictly before this frame's time show the previous frame.
            while (total is None or emitted < total) and emitted < last_time * target:
                yield image if previous is None else previous
                emitted += 1
            previous = image
        if previous is None:
            raise EmodiffError(f"Cannot read {path}: its video stream has no decodable frames.")
        if total is None:
            total = round((last_time + _frame_interval(stream)) * target)
        while emitted < total:
            yield previous
            emitted += 1


def load_audio(path: str | Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """The first audio stream of `path` as float32 mono at `sample_rate`, from its first sample.

    The rate is converted by FFmpeg's resampler (libswresample); mono is the mean of the channels.
    Sample 0 is paired with video frame 0: a stream start offset between the audio and the video of
    one file is not compensated (files from common tools start both at 0).
    """
    with _open(path) as container:
        if not container.streams.audio:
            raise EmodiffError(f"{path} has no audio stream; give the speech as a separate audio file.")
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="fltp", rate=sample_rate)
        chunks = []
        try:
            for frame in container.decode(stream):
                chunks.extend(out.to_ndarray().mean(axis=0) for out in resampler.resample(frame))
        except av.FFmpegError as err:
            raise EmodiffError(f"Cannot decode {path}: the audio data is damaged ({err.strerror}).") from None
        chunks.extend(out.to_ndarray().mean(axis=0) for out in resampler.resample(None))
    if not chunks:
        raise EmodiffError(f"Cannot read {path}: its audio stream has no decodable samples.")
    return np.concatenate(chunks).astype(np.float32, copy=False)


class VideoWriter:
    """Stream RGB frames into an H.264 mp4 (yuv420p) with the given mono audio muxed as AAC.

    Use as a context manager; frames go straight to the encoder, so memory does not grow with
    length. The file is written as a hidden temporary next to `path` and renamed to `path` when the
    block ends without an exception; on an exception it is deleted and `path` is left untouched.
    yuv420p needs even sizes: an odd width or height is padded by repeating the last column/row.
    The audio (an array at `sample_rate`, or any file `load_audio` reads) is cut at the end of the
    video, like ffmpeg's `-shortest`, and interleaved with the frames as they are written. `comment` is written
    as the container's comment tag (`probe` reads it back).
    """

    def __init__(self, path: str | Path, fps: float = 25.0, audio: np.ndarray | str | Path | None = None,
                 sample_rate: int = SAMPLE_RATE, crf: int = 18, comment: str | None = None):
        self.path = Path(path)
        self.fps = Fraction(fps).limit_denominator(1001)
        if isinstance(audio, (str, Path)):
            audio = load_audio(audio, sample_rate)
        self.audio = None if audio is None else np.asarray(audio, dtype=np.float32).reshape(-1)
        self.sample_rate = sample_rate
        self.crf = crf
        self.comment = comment
        self.n_frames = 0
        self.size: tuple[int, int] | None = None
        self._tmp = self.path.with_name(f".{self.path.stem}.tmp-{os.getpid()}.mp4")
        self._container: av.container.OutputContainer | None = None
        self._video: av.video.stream.VideoStream | None = None
        self._audio: av.audio.stream.AudioStream | None = None
        self._audio_written = 0

    def __enter__(self) -> "VideoWriter":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._container = av.open(str(self._tmp), "w", format="mp4", options={"movflags": "+faststart"})
        if self.comment:
            self._container.metadata["comment"] = self.comment
        return self

    def _add_streams(self, height: int, width: int) -> None:
        self._video = self._container.add_stream("libx264", rate=self.fps)
        self._video.width, self._video.height = width + width % 2, height + height % 2
        self._video.pix_fmt = "yuv420p"
        self._video.options = {"crf": str(self.crf)}
        if self.audio is not None:
            self._audio = self._container.add_stream("aac", rate=self.sample_rate, layout="mono")

    def write(self, frame: np.ndarray) -> None:
        """Append one RGB uint8 (H, W, 3) frame; all frames must share the first one's size."""
        frame = np.asarray(frame)
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError(f"VideoWriter expects RGB uint8 frames (H, W, 3), got {frame.dtype} {frame.shape}.")
        if self._container is None:
            raise RuntimeError("VideoWriter.write is only valid inside its `with` block.")
        if self.size is None:
            self.size = frame.shape[:2]
            self._add_streams(*self.size)
        elif frame.shape[:2] != self.size:
            raise ValueError(f"Frame size {frame.shape[:2]} differs from the first frame's {self.size}.")
        height, width = self.size
        frame = np.pad(frame, ((0, height % 2), (0, width % 2), (0, 0)), mode="edge")
        video_frame = av.VideoFrame.from_ndarray(frame, format="rgb24")
        video_frame.pts = self.n_frames
        self._container.mux(self._video.encode(video_frame))
        self.n_frames += 1
        self._write_audio_until(self.n_frames / self.fps)

    def _write_audio_until(self, seconds: Fraction) -> None:
        if self._audio is None:
            return
        end = min(len(self.audio), int(seconds * self.sample_rate))
        if end <= self._audio_written:
            return
        audio_frame = av.AudioFrame.from_ndarray(self.audio[None, self._audio_written:end], format="flt", layout="mono")
        audio_frame.sample_rate = self.sample_rate
        audio_frame.pts = self._audio_written
        audio_frame.time_base = Fraction(1, self.sample_rate)
        self._container.mux(self._audio.encode(audio_frame))
        self._audio_written = end

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        try:
            if exc_type is None:
                if self._video is None:
                    raise ValueError(f"No frames were written to {self.path}.")
                self._container.mux(self._video.encode(None))
                if self._audio is not None:
                    self._container.mux(self._audio.encode(None))
            self._container.close()
        except BaseException:
            self._tmp.unlink(missing_ok=True)
            raise
        finally:
            self._container = None
        if exc_type is None:
            os.replace(self._tmp, self.path)
        else:
            self._tmp.unlink(missing_ok=True)
