"""DECA expression extraction speed: frames per second ÷ a 25 fps source (> 1 = faster than real time).

Uses a full-size coarse encoder (random weights in DECA's checkpoint layout) and a FLAME-sized
model (5023 vertices, 9976 triangles, random values), so the cost is that of the real files.

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/bench_deca.py --frames 32 --device cpu
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from third_party.deca.assets import FlameAssets
from third_party.deca.encoder import DecaEncoder
from third_party.deca.extractor import DecaExpressionExtractor

N_VERTS, N_FACES, SOURCE_FPS = 5023, 9976, 25


def write_assets(folder: Path, rng: np.random.Generator) -> tuple[Path, Path]:
    flame = FlameAssets(v_template=rng.normal(size=(N_VERTS, 3)).astype(np.float32),
                        shapedirs=rng.normal(scale=1e-3, size=(N_VERTS, 3, 400)).astype(np.float32),
                        posedirs=rng.normal(scale=1e-3, size=(N_VERTS, 3, 36)).astype(np.float32),
                        J_regressor=rng.dirichlet(np.ones(N_VERTS), 5).astype(np.float32),
                        weights=rng.dirichlet(np.ones(5), N_VERTS).astype(np.float32),
                        parents=np.array([-1, 0, 1, 1, 1]), faces=rng.integers(0, N_VERTS, (N_FACES, 3)))
    np.savez(folder / "generic_model.npz", **asdict(flame))
    embedding = {"static_lmk_faces_idx": rng.integers(0, N_FACES, 51),
                 "static_lmk_bary_coords": rng.dirichlet(np.ones(3), 51),
                 "dynamic_lmk_faces_idx": rng.integers(0, N_FACES, (79, 17)),
                 "dynamic_lmk_bary_coords": rng.dirichlet(np.ones(3), (79, 17)),
                 "full_lmk_faces_idx": rng.integers(0, N_FACES, (1, 68)),
                 "full_lmk_bary_coords": rng.dirichlet(np.ones(3), (1, 68))}
    np.save(folder / "landmark_embedding.npy", embedding, allow_pickle=True)
    torch.save({"E_flame": DecaEncoder().state_dict()}, folder / "deca_model.tar")
    return folder / "deca_model.tar", folder / "generic_model.npz"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (args.frames, 256, 256, 3), dtype=np.uint8)
    landmarks = rng.uniform(70, 190, (args.frames, 68, 2))
    with tempfile.TemporaryDirectory() as folder:
        deca_model, flame_model = write_assets(Path(folder), rng)
        extractor = DecaExpressionExtractor(deca_model, flame_model, args.device, batch_size=args.batch_size)
        extractor.extract(frames[:args.batch_size], landmarks[:args.batch_size])  # warm-up
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        extractor.extract(frames, landmarks)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    fps = args.frames / seconds
    print(f"device {args.device}, threads {torch.get_num_threads()}: {fps:.1f} frames/s; "
          f"real-time ratio (÷ {SOURCE_FPS} fps) = {fps / SOURCE_FPS:.2f}")


if __name__ == "__main__":
    main()
