"""Memory and time of Diversity and of `emodiff evaluate` on long runs.

    OMP_NUM_THREADS=1 python benchmarks/bench_evaluate.py [--frames 25000] [--dims 50] [--no-cli]

1. Diversity of N pooled expression vectors (D dims): peak memory of its numpy allocations (tracemalloc)
   and time.
2. `emodiff evaluate` on a run of N frames (unless --no-cli): a reference folder and a run folder of
   250-frame 32×32 videos with synthetic speech, `<name>.expression.npy` and a per-frame intensity
   schedule (the run reaches half the asked intensity); the command runs as users run it
   (`--aligned --landmarks none --expression none`, no network weights) in a child process whose wall
   time and peak resident memory are printed.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

from emodiff.metrics import framewise

VIDEO_FRAMES = 250
SIZE = 32


def bench_diversity(n_frames: int, dims: int) -> None:
    rng = np.random.default_rng(0)
    videos = [rng.normal(size=(VIDEO_FRAMES, dims)) for _ in range(max(1, n_frames // VIDEO_FRAMES))]
    tracemalloc.start()
    start = time.perf_counter()
    value = framewise.diversity(videos)
    seconds = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    inputs = sum(v.nbytes for v in videos)
    print(f"diversity of {n_frames} frames × {dims} dims: {value:.4f} in {seconds:.2f} s, peak numpy memory "
          f"{peak / 2**20:.1f} MiB (inputs {inputs / 2**20:.1f} MiB)")


def write_run(folder: Path, n_videos: int, gain: float, with_sidecars: bool) -> None:
    """`n_videos` videos of smooth noise frames with speech; expressions = gain·k·d + mouth."""
    from emodiff.data.media import VideoWriter
    from emodiff.data.synthetic import SyntheticWorld

    world = SyntheticWorld(size=SIZE)
    direction = world.emotion_direction("happy")
    folder.mkdir(parents=True)
    for i in range(n_videos):
        rng = np.random.default_rng(i)
        k = world.intensity_curve(3, VIDEO_FRAMES, rng)
        audio, mouth = world.speech(VIDEO_FRAMES, k, rng)
        expression = gain * k[:, None] * direction
        expression[:, 0] = mouth
        frames = np.clip(128 + 60 * np.sin(np.arange(VIDEO_FRAMES)[:, None, None, None] / 7 + rng.normal(size=(1, SIZE, SIZE, 3))),
                         0, 255).astype(np.uint8)
        with VideoWriter(folder / f"v{i:04d}.mp4", 25, audio) as writer:
            for frame in frames:
                writer.write(frame)
        np.save(folder / f"v{i:04d}.expression.npy", expression.astype(np.float32))
        if with_sidecars:
            (folder / f"v{i:04d}.json").write_text(json.dumps({"emotion": "happy", "identity": "a",
                                                               "intensity": np.round(k, 4).tolist()}))


def bench_cli(n_frames: int) -> None:
    n_videos = max(1, n_frames // VIDEO_FRAMES)
    with tempfile.TemporaryDirectory(prefix="emodiff-bench-eval-") as tmp:
        start = time.perf_counter()
        write_run(Path(tmp) / "reference", n_videos, 1.0, with_sidecars=True)
        write_run(Path(tmp) / "half", n_videos, 0.5, with_sidecars=False)
        print(f"wrote 2 × {n_videos} videos ({n_videos * VIDEO_FRAMES} frames each) in {time.perf_counter() - start:.0f} s")
        start = time.perf_counter()
        result = subprocess.run([sys.executable, "-m", "emodiff", "evaluate", "--reference", f"{tmp}/reference",
                                 "--run", f"half={tmp}/half", "--aligned", "--landmarks", "none", "--expression", "none",
                                 "--size", str(SIZE), "--out", f"{tmp}/report"], capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if result.returncode != 0:
            sys.exit(f"emodiff evaluate failed: {result.stderr.strip().splitlines()[-1]}")
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**10  # KiB on Linux
        metrics = json.loads((Path(tmp) / "report" / "metrics.json").read_text())["metrics"]
    print(f"emodiff evaluate, reference + 1 run of {n_videos * VIDEO_FRAMES} frames ({SIZE}² crops): "
          f"{seconds:.0f} s, peak resident memory {peak:.0f} MiB")
    for run, row in metrics.items():
        print(f"  {run}: " + ", ".join(f"{k} {v:.4g}" for k, v in row.items() if isinstance(v, float)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=25_000)
    parser.add_argument("--dims", type=int, default=50)
    parser.add_argument("--no-cli", action="store_true", help="Only the Diversity measurement.")
    args = parser.parse_args()
    bench_diversity(args.frames, args.dims)
    if not args.no_cli:
        bench_cli(args.frames)


if __name__ == "__main__":
    main()
