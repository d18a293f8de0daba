"""Prepare and data-loading throughput, measured in one run.

    python benchmarks/bench_prepare.py [VIDEO...] [--size 128] [--workers 1]
    (default videos: the four clips in $EMODIFF_FIXTURES)

Prints prepare speed per worker as (frames/s) ÷ (source fps) — above 1 means one core prepares
faster than real time (docs/design.md §9) — split into the phases recorded in meta.json, and the
FrameDataset throughput in samples/s on the store it made.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from emodiff.data.datasets import FrameDataset
from emodiff.data.media import probe
from emodiff.data.prepare import PrepareSettings, prepare
from emodiff.data.store import ClipStore


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("videos", nargs="*")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--samples", type=int, default=500, help="FrameDataset samples to time")
    args = parser.parse_args()
    videos = [Path(v) for v in args.videos]
    if not videos and os.environ.get("EMODIFF_FIXTURES"):
        videos = sorted(Path(os.environ["EMODIFF_FIXTURES"]).glob("*.mp4"))
    if not videos:
        sys.exit("usage: bench_prepare.py VIDEO... (or set EMODIFF_FIXTURES)")
    source_fps = np.mean([probe(v).fps for v in videos])

    with tempfile.TemporaryDirectory() as tmp:
        summary = prepare(videos, Path(tmp) / "store", PrepareSettings(size=args.size), workers=args.workers)
        store = ClipStore.open(Path(tmp) / "store")
        clips = list(store.clips())
        per_worker = summary["frames"] / summary["seconds"] / min(args.workers, len(videos))
        print(f"prepare: {summary['frames']} frames of {len(clips)} clips at {args.size}px, "
              f"{args.workers} worker(s), {summary['seconds']:.1f} s")
        print(f"  per worker {per_worker:7.1f} frames/s / {source_fps:g} fps source = "
              f"{per_worker / source_fps:5.2f} x real time")
        for phase in ("detect_s", "crop_s", "audio_expression_s"):
            seconds = sum(c.meta["timings"][phase] for c in clips)
            print(f"  {phase[:-2]:<17} {summary['frames'] / seconds:8.1f} frames/s")

        dataset = FrameDataset(store)
        order = np.random.default_rng(0).integers(len(dataset), size=args.samples)
        start = time.perf_counter()
        for index in order:
            dataset[int(index)]
        rate = args.samples / (time.perf_counter() - start)
        print(f"FrameDataset: {rate:7.1f} samples/s (one process, {args.size}px, random access)")


if __name__ == "__main__":
    main()
