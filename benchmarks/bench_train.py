"""Denoiser training speed (docs/design.md §9): samples/s per config, loader throughput ÷ step rate (goal ≥ 5),
the share of the step spent in the ReferenceNet, and the FLOPs of a step (forward + backward of the denoiser and
the ReferenceNet, counted) per second against the device's peak.

    OMP_NUM_THREADS=1 python benchmarks/bench_train.py [--store STORE] [--configs tiny base] [--steps 3]
        [--device cuda] [--precision bf16|fp32] [--batch-size 32] [--peak-tflops 989]

Steps run under bf16 autocast by default (what accelerate's mixed_precision bf16 does). Without --store a random
128² store is written to a temporary folder. All numbers come from one run.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.throughput import (count_flops, device_name, peak_memory, peak_tflops, reset_peak_memory,  # noqa: E402
                                   share_of_peak, synchronize)
from emodiff.data.datasets import FrameDataset  # noqa: E402
from emodiff.diffusion.gaussian import GaussianDiffusion  # noqa: E402
from emodiff.inference import autocast  # noqa: E402
from emodiff.models.reference_net import ReferenceNet  # noqa: E402
from emodiff.models.unet import DenoisingUNet  # noqa: E402
from emodiff.train.common import load_config  # noqa: E402
from emodiff.train.denoiser import compute_losses  # noqa: E402
from tests.conftest import write_random_store  # noqa: E402


def loader_rate(dataset: FrameDataset, batch_size: int, num_workers: int, batches: int) -> float:
    """Samples per second delivered by the training DataLoader."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=num_workers, drop_last=True)
    it = iter(loader)
    next(it)  # worker start-up is not part of the steady state
    start = time.perf_counter()
    n = 0
    for _ in range(batches):
        n += len(next(it)["target"])
    return n / (time.perf_counter() - start)


def backward_step(batch, unet, reference_net, diffusion, config, precision: str) -> None:
    """Forward (under autocast) and backward of the eq. 16 loss on one batch."""
    with autocast(batch["target"].device, precision):
        losses = compute_losses(batch, unet, reference_net, diffusion, config)
    losses["loss"].backward()


def step_seconds(batch, unet, reference_net, diffusion, config, optimizer, steps: int, reference: bool,
                 precision: str) -> float:
    """Mean seconds per optimizer step; with reference=False the ReferenceNet is replaced by fixed features."""
    device = batch["target"].device
    with autocast(device, precision):
        fixed = [f.detach() for f in reference_net(batch["identity"])]
    run_reference = reference_net if reference else (lambda identity: fixed)
    times = []
    for i in range(steps + 1):
        synchronize(device)
        start = time.perf_counter()
        backward_step(batch, unet, run_reference, diffusion, config, precision)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        synchronize(device)
        if i:  # the first step warms up allocators
            times.append(time.perf_counter() - start)
    return sum(times) / len(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store")
    parser.add_argument("--configs", nargs="+", default=["tiny", "base"])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch-size", type=int, help="override train.batch_size (base: 8)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", choices=["bf16", "fp32"], default="bf16", help="autocast of the training step")
    parser.add_argument("--peak-tflops", type=float, help="the device's peak (default: looked up for H100/H200/A100)")
    args = parser.parse_args()
    device = torch.device(args.device)
    peak = peak_tflops(device, args.peak_tflops)
    steps_in = "fp32 (no autocast)" if args.precision == "fp32" else f"{args.precision} autocast"
    print(f"device {device_name(device)}, steps in {steps_in}, torch threads {torch.get_num_threads()}, "
          f"peak {'n/a' if peak is None else f'{peak:g} TFLOP/s'}")
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        store = args.store or write_random_store(Path(tmp) / "store", n_clips=4, n_frames=64, size=128,
                                                 feat_dim=320, exp_dim=50).root
        for name in args.configs:
            config = load_config(ROOT / "configs" / f"denoiser_{name}.yaml")
            batch_size = args.batch_size or config.train.batch_size
            dataset = FrameDataset(store, window=config.data.window, resolution=config.data.resolution,
                                   identity_source=config.data.identity_source)
            first = dataset.clips[0]
            unet = DenoisingUNet(sample_size=config.data.resolution, window=config.data.window,
                                 audio_dim=first.audio_feats.shape[1], expression_dim=first.expression.shape[1],
                                 **OmegaConf.to_container(config.unet)).train().to(device)
            reference_net = ReferenceNet.matching(unet).train().to(device)
            optimizer = torch.optim.AdamW(list(unet.parameters()) + list(reference_net.parameters()), lr=1e-5)
            diffusion = GaussianDiffusion.from_config(config.diffusion)
            batch = {key: value.to(device) for key, value in next(iter(DataLoader(dataset, batch_size=batch_size,
                                                                                   shuffle=True))).items()}
            step_flops = count_flops(lambda: backward_step(batch, unet, reference_net, diffusion, config, "fp32"))  # noqa: B023 (called at once)
            optimizer.zero_grad(set_to_none=True)
            reset_peak_memory(device)
            full = step_seconds(batch, unet, reference_net, diffusion, config, optimizer, args.steps, reference=True,
                                precision=args.precision)
            memory = peak_memory(device)
            without = step_seconds(batch, unet, reference_net, diffusion, config, optimizer, args.steps, reference=False,
                                   precision=args.precision)
            train_rate = batch_size / full
            load_rate = loader_rate(dataset, batch_size, config.data.num_workers, batches=max(4, args.steps * 2))
            params = sum(p.numel() for p in unet.parameters()) / 1e6
            ref_params = sum(p.numel() for p in reference_net.parameters()) / 1e6
            print(f"[{name}] {config.data.resolution}² batch {batch_size}: UNet {params:.1f} M + ReferenceNet "
                  f"{ref_params:.1f} M parameters")
            print(f"[{name}] training {train_rate:.2f} samples/s ({full:.3f} s/step); loader {load_rate:.1f} samples/s "
                  f"with {config.data.num_workers} workers; loader ÷ training = {load_rate / train_rate:.1f} (goal ≥ 5)")
            print(f"[{name}] ReferenceNet share of the step time: {1 - without / full:.1%}")
            print(f"[{name}] {step_flops / batch_size / 1e9:.3f} GFLOP per sample (forward + backward), "
                  f"{step_flops / full / 1e12:.4f} TFLOP/s = {share_of_peak(step_flops / full, peak)} of peak; "
                  f"peak memory {memory}")


if __name__ == "__main__":
    main()
