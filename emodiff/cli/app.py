"""Serve a pipeline in the browser: face, speech, emotion timeline and intensity curve in, talking-head video out.

    emodiff app [--checkpoint DIR] [--host 127.0.0.1] [--port 7860] [--concurrency N] [--verbose]

Needs the `app` extra (`pip install -e ".[app]"`, Gradio). The page takes a face (upload, webcam or an example face
of the pipeline's synthetic world), speech (upload, microphone or an example), an emotion timeline (rows of emotion
and start time, cross-fade), the intensity (a constant, key frames of time and k with their interpolation, or
predicted from the voice with scale, clip and smoothing), the sampler, steps, guidance and seed. The schedule plot
follows every edit before any sampling, and a schedule `emodiff sample` would refuse shows its sentence next to the
field. Generate shows per-frame progress and can be cancelled; the result is the mp4 with its audio, the schedule
plot, a contact sheet, a zip of them with the inputs, and the `emodiff sample` command that makes the same video.
Requests are queued, N at a time (default 1); a bad or cancelled request only ends itself. The default pipeline is
the bundled demo (emodiff/assets/demo); the server listens on 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", type=Path, help="pipeline folder (default: the bundled emodiff/assets/demo)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    parser.add_argument("--concurrency", type=int, default=1,
                        help="videos sampled at once; further requests wait in the queue (default 1)")


def run(args: argparse.Namespace) -> int:
    from emodiff.app import serve

    serve(args.checkpoint, args.host, args.port, args.concurrency)
    return 0
