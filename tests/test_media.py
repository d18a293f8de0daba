"""Media I/O: probing, frame-rate resampling by timestamps, audio to 16 kHz mono, the mp4 writer."""

from __future__ import annotations

import tracemalloc
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from emodiff.data.media import SAMPLE_RATE, VideoWriter, load_audio, probe, read_video
from emodiff.errors import EmodiffError

SIZE = (32, 48)  # (H, W) of the clips made here


def index_frame(k: int) -> np.ndarray:
    """A grey frame whose level encodes the source frame index k (survives H.264 within ±2)."""
    return np.full((*SIZE, 3), 4 * k, dtype=np.uint8)


def frame_index(frame: np.ndarray) -> int:
    return int(round(frame.mean() / 4))


def write_indexed(path: Path, codec: str, pts: list[int], time_base: Fraction) -> None:
    """Encode index frames with PyAV at the given presentation timestamps (any container)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=int(round(1 / time_base)) if codec == "mjpeg" else None)
        stream.width, stream.height = SIZE[1], SIZE[0]
        stream.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
        stream.codec_context.time_base = time_base
        for k, p in enumerate(pts):
            frame = av.VideoFrame.from_ndarray(index_frame(k), format="rgb24")
            frame.pts, frame.time_base = p, time_base
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def expected_indices(times: list[Fraction], n_out: int, fps: int = 25) -> list[int]:
    """The documented rule: output i shows the latest source frame with time ≤ i / fps."""
    return [max([0] + [k for k, t in enumerate(times) if t <= Fraction(i, fps)]) for i in range(n_out)]


def sine(freq: float, seconds: float, rate: int, amplitude: float = 0.5) -> np.ndarray:
    return (amplitude * np.sin(2 * np.pi * freq * np.arange(int(seconds * rate)) / rate)).astype(np.float32)


def dominant_frequency(audio: np.ndarray, rate: int = SAMPLE_RATE) -> float:
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    return float(np.fft.rfftfreq(len(audio), 1 / rate)[spectrum.argmax()])


# --- real fixtures -----------------------------------------------------------------------------

def test_probe_reports_the_fixtures(fixtures_dir: Path) -> None:
    hdtf = probe(fixtures_dir / "hdtf_katiehill_000.mp4")
    assert (hdtf.duration, hdtf.fps, hdtf.width, hdtf.height, hdtf.has_audio) == (8.0, 25.0, 512, 512, True)
    silent = probe(fixtures_dir / "mead_happy_crop.mp4")
    assert silent.has_video and not silent.has_audio and (silent.width, silent.height) == (256, 256)
    speech = probe(fixtures_dir / "speech_radio31_16k.wav")
    assert not speech.has_video and speech.has_audio and speech.duration == pytest.approx(8.0)


def test_real_video_resampled_to_lower_rate_picks_source_frames(fixtures_dir: Path) -> None:
    path = fixtures_dir / "mead_sad_crop.mp4"
    native = list(read_video(path, fps=25))
    assert len(native) == round(probe(path).duration * 25) and native[0].shape == (256, 256, 3)
    slow = list(read_video(path, fps=10))
    assert len(slow) == round(probe(path).duration * 10)
    for i, frame in enumerate(slow):  # frame i at i/10 s is source frame floor(2.5 i)
        np.testing.assert_array_equal(frame, native[int(2.5 * i)])


def test_read_video_streams_in_constant_memory(fixtures_dir: Path) -> None:
    frames = read_video(fixtures_dir / "hdtf_katiehill_000.mp4", fps=25)
    tracemalloc.start()
    n = sum(1 for _ in frames)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert n == 200
    assert peak < 10 * 512 * 512 * 3  # the whole clip would be 200 frames


def test_fixture_audio_is_16k_mono(fixtures_dir: Path) -> None:
    from emodiff.data.store import read_wav

    stereo, rate = read_wav(fixtures_dir / "speech_radio31_16k.wav")  # read_wav averages channels
    mono = load_audio(fixtures_dir / "speech_radio31_16k.wav")
    assert rate == SAMPLE_RATE and mono.dtype == np.float32
    np.testing.assert_allclose(mono, stereo, atol=1e-6)
    from_video = load_audio(fixtures_dir / "hdtf_katiehill_000.mp4")
    assert len(from_video) == 8 * SAMPLE_RATE and 0.05 < np.sqrt(np.mean(from_video ** 2)) < 0.5


def test_video_without_audio_gives_a_clear_error(fixtures_dir: Path) -> None:
    with pytest.raises(EmodiffError, match="mead_happy_crop.mp4 has no audio stream"):
        load_audio(fixtures_dir / "mead_happy_crop.mp4")


# --- media made here ----------------------------------------------------------------------------

def test_30fps_clip_resampled_to_25fps_takes_the_right_frames(tmp_path: Path) -> None:
    path = tmp_path / "clip30.mp4"
    with VideoWriter(path, fps=30) as writer:
        for k in range(60):
            writer.write(index_frame(k))
    frames = list(read_video(path, fps=25))
    assert len(frames) == 50
    times = [Fraction(k, 30) for k in range(60)]
    assert [frame_index(f) for f in frames] == expected_indices(times, 50)


@pytest.mark.parametrize("name, codec, time_base", [
    ("vfr.mkv", "libx264", Fraction(1, 1000)),
    ("vfr.mov", "libx264", Fraction(1, 1000)),
    ("cfr.avi", "mjpeg", Fraction(1, 30)),
    ("raw.h264", "libx264", Fraction(1, 25)),  # no timestamps, no duration: 25 fps assumed, like ffmpeg
])
def test_containers_and_variable_frame_rate(tmp_path: Path, name: str, codec: str, time_base: Fraction) -> None:
    rng = np.random.default_rng(0)
    if time_base == Fraction(1, 1000):  # frame durations 15-70 ms
        pts = np.concatenate([[0], np.cumsum(rng.integers(15, 70, size=49))]).tolist()
    else:
        pts = list(range(50))
    path = tmp_path / name
    write_indexed(path, codec, pts, time_base)
    duration = probe(path).duration
    frames = list(read_video(path, fps=25))
    assert abs(len(frames) - duration * 25) <= 1
    assert frames[0].shape == (*SIZE, 3)
    times = [p * time_base for p in pts]
    assert [frame_index(f) for f in frames] == expected_indices(times, len(frames))


def test_display_rotation_is_applied(tmp_path: Path) -> None:
    path = tmp_path / "rotated.mp4"
    image = np.zeros((*SIZE, 3), dtype=np.uint8)
    image[:8, :8] = 255  # a white top-left corner
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = SIZE[1], SIZE[0], "yuv420p"
        stream.set_display_rotation(90)  # shown turned a quarter counter-clockwise
        for _ in range(3):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode(None))
    info = probe(path)
    assert (info.height, info.width) == (SIZE[1], SIZE[0])
    upright = next(read_video(path, fps=25))
    assert upright.shape == (SIZE[1], SIZE[0], 3)
    assert upright[-4:, :4].mean() > 200 and upright[:4, :4].mean() < 50  # corner moved to bottom-left


@pytest.mark.parametrize("name, codec, rate, layout", [
    ("tone.wav", "pcm_s16le", 48_000, "stereo"),
    ("tone.flac", "flac", 44_100, "5.1"),
    ("tone.mp3", "libmp3lame", 48_000, "stereo"),
    ("tone.m4a", "aac", 22_050, "mono"),
])
def test_audio_files_become_16k_mono(tmp_path: Path, name: str, codec: str, rate: int, layout: str) -> None:
    path = tmp_path / name
    tone = sine(440.0, 2.0, rate)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate, layout=layout)
        channels = stream.codec_context.layout.nb_channels
        samples = np.tile(tone, (channels, 1))
        samples[-1] *= 0.5 if channels > 1 else 1.0  # channels differ: mono must be their mean
        frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout=layout)
        frame.sample_rate, frame.pts = rate, 0
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    audio = load_audio(path)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert abs(len(audio) - 2 * SAMPLE_RATE) <= 2048  # codec padding: at most two codec frames
    middle = audio[4000:28000]
    assert dominant_frequency(middle) == pytest.approx(440.0, abs=2.0)
    expected_rms = 0.5 / np.sqrt(2) * (1 - 0.5 / channels if channels > 1 else 1.0)
    assert np.sqrt(np.mean(middle ** 2)) == pytest.approx(expected_rms, rel=0.05)


def test_writer_output_reads_back_with_audio(tmp_path: Path) -> None:
    path = tmp_path / "out" / "talk.mp4"
    speech = sine(300.0, 3.0, SAMPLE_RATE)  # longer than the video: cut at its end
    with VideoWriter(path, fps=25, audio=speech) as writer:
        for k in range(40):
            writer.write(index_frame(k))
    assert sorted(p.name for p in path.parent.iterdir()) == ["talk.mp4"]
    info = probe(path)
    assert (info.fps, info.width, info.height, info.has_audio) == (25.0, SIZE[1], SIZE[0], True)
    frames = list(read_video(path, fps=25))
    assert [frame_index(f) for f in frames] == list(range(40))
    audio = load_audio(path)
    assert 0 <= len(audio) - 40 / 25 * SAMPLE_RATE < 1024  # AAC pads its last 1024-sample frame
    assert dominant_frequency(audio[2000:24000]) == pytest.approx(300.0, abs=2.0)
    with av.open(str(path)) as container:
        assert container.streams.video[0].codec_context.name == "h264"
        assert container.streams.video[0].codec_context.pix_fmt == "yuv420p"
        assert container.streams.audio[0].codec_context.name == "aac"


def test_writer_pads_odd_sizes_to_even(tmp_path: Path) -> None:
    path = tmp_path / "odd.mp4"
    with VideoWriter(path, fps=25, audio=None) as writer:
        for _ in range(3):
            writer.write(np.full((31, 45, 3), 120, dtype=np.uint8))
    info = probe(path)
    assert (info.height, info.width, info.has_audio) == (32, 46, False)


def test_writer_error_leaves_no_file_and_keeps_the_old_one(tmp_path: Path) -> None:
    path = tmp_path / "video.mp4"
    path.write_bytes(b"previous result")
    with pytest.raises(RuntimeError, match="sampling failed"):
        with VideoWriter(path, fps=25, audio=sine(200.0, 1.0, SAMPLE_RATE)) as writer:
            writer.write(index_frame(0))
            raise RuntimeError("sampling failed")
    assert path.read_bytes() == b"previous result"
    assert [p.name for p in tmp_path.iterdir()] == ["video.mp4"]


def test_unreadable_media_gives_one_sentence_naming_the_file(tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    for read in (probe, load_audio, lambda p: next(read_video(p, fps=25))):
        with pytest.raises(EmodiffError, match="corrupt.mp4") as err:
            read(corrupt)
        assert str(err.value).count(". ") == 0 and str(err.value).endswith(".")
    with pytest.raises(EmodiffError, match="missing.wav does not exist"):
        load_audio(tmp_path / "missing.wav")
