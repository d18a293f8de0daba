"""Synthetic-world speed on one core: render frames/s per size as a ratio to the goal (above 1 = met),
and whole-clip generation (render + speech + mel features + store write) as a multiple of real time.

    OMP_NUM_THREADS=1 python benchmarks/bench_synthetic.py

Goals (issue 8): ≥ 500 frames/s at 32 px and ≥ 50 frames/s at 128 px.
"""

from __future__ import annotations

import tempfile
import time

import numpy as np

from emodiff.data.synthetic import EMOTION_DIRECTIONS, SyntheticWorld, make_store

GOALS = {32: 500.0, 64: None, 128: 50.0, 256: None}
N_FRAMES = 250


def render_rate(size: int) -> float:
    world = SyntheticWorld(0, size)
    rng = np.random.default_rng(0)
    expression = rng.uniform(0, 1, (N_FRAMES, 1)) * EMOTION_DIRECTIONS[rng.integers(0, 8, N_FRAMES)]
    expression[:, 0] = rng.uniform(0, 1, N_FRAMES)
    identity = world.identity(0)
    world.render(identity, expression[:5])  # warm-up
    start = time.perf_counter()
    world.render(identity, expression)
    return N_FRAMES / (time.perf_counter() - start)


def main() -> None:
    for size, goal in GOALS.items():
        rate = render_rate(size)
        ratio = f" = {rate / goal:5.2f} x goal ({goal:g} frames/s)" if goal else ""
        print(f"render {size:3d} px {rate:9.1f} frames/s{ratio}")
    with tempfile.TemporaryDirectory() as root:
        start = time.perf_counter()
        make_store(root, n_identities=2, clips_per_identity=2, n_frames=125, size=64)
        seconds = time.perf_counter() - start
    print(f"make_store 64 px  {4 * 125 / seconds:9.1f} frames/s = {4 * 125 / 25 / seconds:5.2f} x real time at 25 fps")


if __name__ == "__main__":
    main()
