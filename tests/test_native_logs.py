"""Native (C++) log lines on file descriptor 2 are dropped inside `native_logs_silenced`, unless verbose."""

from __future__ import annotations

import os
import threading

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
