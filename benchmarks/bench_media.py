"""Media I/O speed as a multiple of real time: frames/s ÷ the source fps (above 1 = faster).

    python benchmarks/bench_media.py [VIDEO]      (default: $EMODIFF_FIXTURES/hdtf_katiehill_000.mp4)

Measures decoding (`read_video`), audio loading (`load_audio`) and transcoding (decode + H.264/AAC
encode through `VideoWriter`), all streamed, so any length of video can be measured.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

from emodiff.data.media import VideoWriter, load_audio, probe, read_video


def main() -> None:
    if len(sys.argv) > 1:
        path = Path(sys.argv[1])
    elif os.environ.get("EMODIFF_FIXTURES"):
        path = Path(os.environ["EMODIFF_FIXTURES"]) / "hdtf_katiehill_000.mp4"
    else:
        sys.exit("usage: bench_media.py VIDEO (or set EMODIFF_FIXTURES)")
    info = probe(path)
    print(f"{path.name}: {info.width}x{info.height}, {info.fps:g} fps, {info.duration:g} s, audio: {info.has_audio}")

    start = time.perf_counter()
    n_frames = sum(1 for _ in read_video(path, fps=info.fps))
    decode_s = time.perf_counter() - start
    print(f"decode     {n_frames / decode_s:8.1f} frames/s = {n_frames / decode_s / info.fps:6.2f} x real time")

    if info.has_audio:
        start = time.perf_counter()
        audio = load_audio(path)
        audio_s = time.perf_counter() - start
        print(f"audio      {info.duration / audio_s:8.1f} x real time (to 16 kHz mono)")
    else:
        audio = None

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        with VideoWriter(Path(tmp) / "out.mp4", fps=info.fps, audio=audio) as writer:
            for frame in read_video(path, fps=info.fps):
                writer.write(frame)
        transcode_s = time.perf_counter() - start
    print(f"transcode  {n_frames / transcode_s:8.1f} frames/s = {n_frames / transcode_s / info.fps:6.2f} x real time")


if __name__ == "__main__":
    main()
