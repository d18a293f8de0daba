"""Sampling benchmark (DESIGN §9), printed as ratios from one run:

1. overhead: sampling time per frame ÷ (steps × one denoiser forward)   goal ≤ 1.10
2. ReferenceNet invocations per video                                   must be 1
3. peak memory for 2 s vs 20 s of audio, frames streamed to an mp4      flat
4. throughput of one batch of 4 videos ÷ 4 single runs

A random pipeline built from a denoiser config (default configs/denoiser_tiny.yaml at 32²) is used:
speed and memory do not depend on the weights. Run: python benchmarks/bench_sample.py [--config ...]
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from emodiff.data.labels import EMOTIONS  # noqa: E402
from emodiff.data.media import VideoWriter  # noqa: E402
from emodiff.models.reference_net import ReferenceNet  # noqa: E402
from emodiff.models.unet import DenoisingUNet  # noqa: E402
from emodiff.pipeline import EmoDiffPipeline, ExpressionReference, VideoConditions  # noqa: E402
from emodiff.sample import to_uint8  # noqa: E402


def build_pipeline(config_path: str, resolution: int, device: torch.device) -> EmoDiffPipeline:
    config = OmegaConf.load(config_path)
    unet = DenoisingUNet(sample_size=resolution, window=config.data.window, **OmegaConf.to_container(config.unet))
    return EmoDiffPipeline(unet.eval(), ReferenceNet.matching(unet).eval(), ExpressionReference(unet.config.expression_dim),
                           diffusion=OmegaConf.to_container(config.diffusion), resolution=resolution,
                           window=config.data.window).to(device)


def random_video(pipeline: EmoDiffPipeline, seconds: float, seed: int) -> VideoConditions:
    gen = torch.Generator().manual_seed(seed)
    n_frames, size = round(seconds * pipeline.settings["fps"]), pipeline.settings["resolution"]
    weights = torch.zeros(n_frames, len(EMOTIONS))
    weights[:, EMOTIONS.index("happy")] = 1
    return VideoConditions(identity=torch.rand(3, size, size, generator=gen) * 2 - 1,
                           audio=torch.randn(n_frames, pipeline.unet.config.audio_dim, generator=gen),
                           expression=torch.randn(n_frames, pipeline.unet.config.expression_dim, generator=gen),
                           intensity=torch.full((n_frames,), 0.7), emotion_weights=weights)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def forward_seconds(pipeline: EmoDiffPipeline, video: VideoConditions, repeats: int) -> float:
    """Median time of one conditional denoiser forward for one frame (the unit of the overhead ratio)."""
    device, n = pipeline.device, pipeline.settings["window"]
    identity = video.identity[None].to(device)
    window = torch.arange(2 * n + 1)
    inputs = dict(identity=identity, motion=identity.repeat(1, 2, 1, 1), audio=video.audio[window][None].to(device),
                  expression=video.expression[window][None].to(device), reference_features=pipeline.reference_net(identity),
                  emotion=torch.tensor([5], device=device), intensity=torch.tensor([0.7], device=device),
                  audio_keep=torch.tensor([True], device=device), expression_keep=torch.tensor([True], device=device))
    x, t = torch.randn_like(identity), torch.tensor(500, device=device)
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        pipeline.unet(x, t, **inputs)
        synchronize(device)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def sample_seconds(pipeline: EmoDiffPipeline, videos: list[VideoConditions], steps: int, sampler: str) -> float:
    synchronize(pipeline.device)
    start = time.perf_counter()
    for _ in pipeline.sample(videos, steps=steps, sampler=sampler, seeds=list(range(len(videos))), progress=False):
        pass
    synchronize(pipeline.device)
    return time.perf_counter() - start


def time_inside_unet(pipeline: EmoDiffPipeline, video: VideoConditions, steps: int, sampler: str) -> float:
    """Fraction of one sampling run's wall time spent inside `unet.forward` (timed by hooks around each call)."""
    spent, started = [], []

    def before(module, inputs):
        synchronize(pipeline.device)
        started.append(time.perf_counter())

    def after(module, inputs, output):
        synchronize(pipeline.device)
        spent.append(time.perf_counter() - started.pop())

    hooks = [pipeline.unet.register_forward_pre_hook(before), pipeline.unet.register_forward_hook(after)]
    total = sample_seconds(pipeline, [video], steps, sampler)
    for hook in hooks:
        hook.remove()
    return sum(spent) / total


def streamed_peak_bytes(pipeline: EmoDiffPipeline, video: VideoConditions, steps: int, out: Path) -> int:
    """Peak memory while sampling `video` into an mp4: CUDA allocator peak, or the process's peak RSS on CPU."""
    device = pipeline.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    audio = np.zeros(video.n_frames * 640, dtype=np.float32)
    with VideoWriter(out, pipeline.settings["fps"], audio=audio) as writer:
        for _, frames in pipeline.sample([video], steps=steps, sampler="ddim", progress=False):
            writer.write(to_uint8(frames[0]))
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(Path(__file__).resolve().parents[1] / "configs" / "denoiser_tiny.yaml"))
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--sampler", default="ddim", choices=["ddpm", "ddim", "dpm++"])
    parser.add_argument("--seconds", type=float, default=1.0, help="video length for the overhead and batch parts")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    pipeline = build_pipeline(args.config, args.resolution, device)
    fps = pipeline.settings["fps"]
    print(f"device {device}, {Path(args.config).name} at {args.resolution}², {args.sampler} × {args.steps} steps, "
          f"torch threads {torch.get_num_threads()}")

    video = random_video(pipeline, args.seconds, seed=0)
    sample_seconds(pipeline, [random_video(pipeline, 0.2, seed=9)], args.steps, args.sampler)  # warm-up
    forwards, samplings = [], []
    for _ in range(3):  # interleaved, best of each: a busy machine slows both sides alike
        forwards.append(forward_seconds(pipeline, video, repeats=10))
        samplings.append(sample_seconds(pipeline, [video], args.steps, args.sampler))
    forward, per_frame = min(forwards), min(samplings) / video.n_frames
    print(f"1. overhead: {per_frame * 1e3:.2f} ms/frame ÷ ({args.steps} × {forward * 1e3:.2f} ms forward) = "
          f"{per_frame / (args.steps * forward):.3f}   (goal ≤ 1.10)")
    inside = time_inside_unet(pipeline, video, args.steps, args.sampler)
    print(f"   share of the sampling time spent inside the denoiser's forwards: {inside:.3f} "
          f"(ratio 1 / share = {1 / inside:.3f}, insensitive to a busy machine)")

    calls = []
    hook = pipeline.reference_net.register_forward_hook(lambda module, inputs, output: calls.append(inputs[0].shape[0]))
    sample_seconds(pipeline, [video], args.steps, args.sampler)
    hook.remove()
    print(f"2. ReferenceNet invocations per video: {len(calls)} call(s) for {sum(calls)} video(s), "
          f"{video.n_frames} frames × {args.steps} steps")

    with tempfile.TemporaryDirectory() as tmp:
        short = streamed_peak_bytes(pipeline, random_video(pipeline, 2.0, seed=1), 2, Path(tmp) / "short.mp4")
        long = streamed_peak_bytes(pipeline, random_video(pipeline, 20.0, seed=2), 2, Path(tmp) / "long.mp4")
    kind = "CUDA allocator peak" if device.type == "cuda" else "process peak RSS"
    print(f"3. peak memory ({kind}), 2 s: {short / 2**20:.1f} MiB, 20 s: {long / 2**20:.1f} MiB, "
          f"ratio {long / short:.3f}   (flat ≈ 1)")

    videos = [random_video(pipeline, args.seconds, seed=10 + v) for v in range(4)]
    singles = sum(sample_seconds(pipeline, [v], args.steps, args.sampler) for v in videos)
    batch = sample_seconds(pipeline, videos, args.steps, args.sampler)
    print(f"4. one batch of 4 videos: {batch:.2f} s vs 4 single runs: {singles:.2f} s, "
          f"throughput ×{singles / batch:.2f}   ({4 * video.n_frames / batch:.1f} frames/s at {fps:g} fps)")


if __name__ == "__main__":
    main()
