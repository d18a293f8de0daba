"""Native (C++) log lines on file descriptor 2 are dropped inside `native_logs_silenced`, unless verbose."""

from __future__ import annotations

import os
import threading
import time

from emodiff.native_logs import VERBOSE_ENV, native_logs_silenced


def test_descriptor_2_is_silenced_inside_nested_and_concurrent_blocks_and_restored_after(capfd, monkeypatch):
    monkeypatch.delenv(VERBOSE_ENV, raising=False)
    os.write(2, b"before\n")
    with native_logs_silenced():
        os.write(2, b"W0000 hidden\n")
        with native_logs_silenced():
            os.write(2, b"W0000 hidden too\n")
        os.write(2, b"W0000 still hidden\n")
    os.write(2, b"after\n")

    inside = threading.Barrier(2)

    def silenced_worker() -> None:
        with native_logs_silenced():
            inside.wait()
            os.write(2, b"W0000 from a thread\n")
            inside.wait()

    workers = [threading.Thread(target=silenced_worker) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    os.write(2, b"end\n")
    assert capfd.readouterr().err == "before\nafter\nend\n"


def test_verbose_keeps_them(capfd, monkeypatch):
    monkeypatch.setenv(VERBOSE_ENV, "1")
    with native_logs_silenced():
        os.write(2, b"W0000 shown\n")
    assert capfd.readouterr().err == "W0000 shown\n"


def test_tracking_a_real_video_as_prepare_and_evaluate_do_writes_no_log_lines_unless_verbose(
        fixtures_dir, capfd, monkeypatch):
    """In video mode mediapipe's graph threads log between frames too (one line reached `emodiff prepare` when only
    each call was silenced)."""
    from emodiff.data.prepare import PrepareSettings, detect_faces

    def track() -> str:
        points, _, _ = detect_faces(fixtures_dir / "mead_happy_crop.mp4", PrepareSettings(size=64))
        assert len(points) > 100
        time.sleep(0.5)  # let the graph threads write what they would
        return capfd.readouterr().err

    monkeypatch.delenv(VERBOSE_ENV, raising=False)
    assert track() == ""
    monkeypatch.setenv(VERBOSE_ENV, "1")
    assert "W0000" in track()
