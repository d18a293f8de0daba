"""Silence the C++ log lines of mediapipe and TensorFlow Lite (`W0000 … inference_feedback_manager.cc`,
`INFO: Created TensorFlow Lite XNNPACK delegate`) unless the user asks for them.

These libraries log through absl / TFLite straight to file descriptor 2, so neither Python's logging nor
`GLOG_minloglevel` / `TF_CPP_MIN_LOG_LEVEL` reach them (measured with mediapipe 0.10.21). `native_logs_silenced()`
points descriptor 2 at /dev/null around the calls that log; `emodiff --verbose` (or `EMODIFF_VERBOSE=1`) keeps them.
"""

from __future__ import annotations

import os
import sys
import threading
from contextlib import contextmanager
from typing import Iterator

VERBOSE_ENV = "EMODIFF_VERBOSE"

_lock = threading.Lock()
_depth = 0  # threads inside the context; the first redirects descriptor 2, the last restores it
_saved_stderr: int | None = None


def verbose() -> bool:
    """Whether the user asked to see native log lines."""
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


@contextmanager
def native_logs_silenced() -> Iterator[None]:
    """Send what native code writes to descriptor 2 to /dev/null while the block runs (thread-safe, nestable).

    Python's own writes to stderr from other threads during the block are lost too, so keep the block short."""
    global _depth, _saved_stderr
    if verbose():
        yield
        return
    with _lock:
        if _depth == 0:
            sys.stderr.flush()
            _saved_stderr = os.dup(2)
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 2)
            os.close(devnull)
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                sys.stderr.flush()
                os.dup2(_saved_stderr, 2)
                os.close(_saved_stderr)
                _saved_stderr = None
