"""Sampling benchmark (docs/design.md §9), printed as ratios from one run:

1. overhead: sampling time per frame ÷ (steps × one denoiser forward)   goal ≤ 1.10
2. ReferenceNet invocations per video                                   must be 1
3. peak memory for 2 s vs 20 s of audio, frames streamed to an mp4      flat
4. throughput of one batch of 4 videos ÷ 4 single runs
5. frames/s for 1, 8, 32 and 128 simultaneous streams (videos sampled as one batch), UNet forwards per frame,
   achieved FLOP/s (FLOPs counted) and its share of the device's peak (--peak-tflops, or looked up on CUDA)
6. our denoiser against diffusers' UNet2DModel of the same widths, depth and attention sites (time ratio)

A random pipeline built from a denoiser config (default configs/denoiser_tiny.yaml at 32²) is used:
speed and memory do not depend on the weights. Run:
    python benchmarks/bench_sample.py [--config configs/denoiser_base.yaml --resolution 128] [--device cuda]
        [--precision bf16] [--compile] [--channels-last] [--parts streams diffusers] [--peak-tflops 989]
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.throughput import (count_flops, device_name, peak_memory, peak_tflops, reset_peak_memory,  # noqa: E402
                                   share_of_peak, synchronize)
from emodiff.data.labels import EMOTIONS  # noqa: E402
from emodiff.data.media import VideoWriter  # noqa: E402
from emodiff.inference import PRECISIONS, InferenceOptions, autocast, prepare_modules  # noqa: E402
from emodiff.models.reference_net import ReferenceNet  # noqa: E402
from emodiff.models.unet import ATTENTION_BACKENDS, DenoisingUNet  # noqa: E402
from emodiff.models.expression_reference import ExpressionReference  # noqa: E402
from emodiff.diffusion.gaussian import config_betas  # noqa: E402
from emodiff.diffusion.schedulers import make_scheduler  # noqa: E402
from emodiff.pipeline import EmoDiffPipeline, VideoConditions  # noqa: E402
from emodiff.data.datasets import to_uint8  # noqa: E402
from emodiff.train.common import load_config  # noqa: E402

PARTS = ("overhead", "memory", "batch", "streams", "diffusers")


def build_pipeline(config_path: str, resolution: int, device: torch.device) -> EmoDiffPipeline:
    config = load_config(config_path)
    unet = DenoisingUNet(sample_size=resolution, window=config.data.window, **OmegaConf.to_container(config.unet))
    return EmoDiffPipeline(unet.eval(), ReferenceNet.matching(unet).eval(), ExpressionReference(unet.config.expression_dim),
                           scheduler=make_scheduler("ddim", config_betas(config.diffusion)), resolution=resolution,
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


def precision(pipeline: EmoDiffPipeline) -> contextlib.AbstractContextManager:
    """The autocast context the pipeline samples under (`--precision`)."""
    return autocast(pipeline.device, pipeline.inference.precision)


def forward_inputs(pipeline: EmoDiffPipeline, video: VideoConditions,
                   batch: int = 1) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """x_t, t and the conditions of one conditional denoiser forward over `batch` copies of the first frame."""
    device, n = pipeline.device, pipeline.settings["window"]
    identity = video.identity[None].to(device).repeat(batch, 1, 1, 1)
    window = torch.arange(2 * n + 1)
    with precision(pipeline):
        reference_features = pipeline.reference_net(identity)
    inputs = dict(identity=identity, motion=identity.repeat(1, 2, 1, 1),
                  audio=video.audio[window][None].to(device).repeat(batch, 1, 1),
                  expression=video.expression[window][None].to(device).repeat(batch, 1, 1),
                  reference_features=reference_features, emotion=torch.full((batch,), 5, device=device),
                  intensity=torch.full((batch,), 0.7, device=device),
                  audio_keep=torch.ones(batch, dtype=torch.bool, device=device),
                  expression_keep=torch.ones(batch, dtype=torch.bool, device=device))
    return torch.randn_like(identity), torch.tensor(500, device=device), inputs


def median_seconds(run, device: torch.device, repeats: int) -> float:
    """Median wall time of `run()` (synchronised on CUDA)."""
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        run()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def forward_seconds(pipeline: EmoDiffPipeline, video: VideoConditions, repeats: int) -> float:
    """Median time of one conditional denoiser forward for one frame (the unit of the overhead ratio)."""
    x, t, inputs = forward_inputs(pipeline, video)
    with precision(pipeline):
        return median_seconds(lambda: pipeline.unet(x, t, **inputs), pipeline.device, repeats)


def forward_flops(pipeline: EmoDiffPipeline, video: VideoConditions) -> tuple[int, int]:
    """FLOPs of one denoiser forward and one ReferenceNet forward for one frame (count them before
    `accelerate_inference`: the count does not depend on the precision, and compiled code hides the operators)."""
    x, t, inputs = forward_inputs(pipeline, video)
    return (count_flops(lambda: pipeline.unet(x, t, **inputs)),
            count_flops(lambda: pipeline.reference_net(inputs["identity"])))


def sample_seconds(pipeline: EmoDiffPipeline, videos: list[VideoConditions], steps: int, sampler: str,
                   cfg_audio: float = 1.0, cfg_expression: float = 1.0) -> float:
    synchronize(pipeline.device)
    start = time.perf_counter()
    for _ in pipeline.sample(videos, steps=steps, sampler=sampler, cfg_audio=cfg_audio, cfg_expression=cfg_expression,
                             seeds=list(range(len(videos))), progress=False):
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
    reset_peak_memory(device)
    audio = np.zeros(video.n_frames * 640, dtype=np.float32)
    with VideoWriter(out, pipeline.settings["fps"], audio=audio) as writer:
        for _, frames in pipeline.sample([video], steps=steps, sampler="ddim", progress=False):
            writer.write(to_uint8(frames[0]))
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def stream_rates(pipeline: EmoDiffPipeline, args: argparse.Namespace, flops: tuple[int, int]) -> None:
    """Part 5: S videos of --stream-frames frames sampled as one batch, for each S of --streams."""
    device, fps = pipeline.device, pipeline.settings["fps"]
    per_frame = pipeline.forwards_per_frame(args.steps, args.cfg_audio, args.cfg_exp)
    unet_flops, reference_flops = flops
    peak = peak_tflops(device, args.peak_tflops)
    limit = "" if peak is None else f", limit at peak {peak * 1e12 / (per_frame * unet_flops):,.0f} frames/s"
    print(f"5. streams: {args.sampler} × {args.steps} steps, cfg audio {args.cfg_audio:g} expression {args.cfg_exp:g} "
          f"→ {per_frame} UNet forwards/frame; {unet_flops / 1e9:.3f} GFLOP per UNet forward, "
          f"{reference_flops / 1e9:.3f} per ReferenceNet forward; peak {'n/a' if peak is None else f'{peak:g} TFLOP/s'}"
          f"{limit}")
    print(f"   {'streams':>7} {'frames/s':>10} {'TFLOP/s':>9} {'of peak':>8} {'memory':>10}")
    for streams in args.streams:
        videos = [random_video(pipeline, args.stream_frames / fps, seed=100 + v) for v in range(streams)]
        warm = [random_video(pipeline, 1 / fps, seed=v) for v in range(streams)]  # compiles / records this batch shape
        sample_seconds(pipeline, warm, args.steps, args.sampler, args.cfg_audio, args.cfg_exp)
        reset_peak_memory(device)
        seconds = sample_seconds(pipeline, videos, args.steps, args.sampler, args.cfg_audio, args.cfg_exp)
        frames = streams * args.stream_frames
        achieved = (frames * per_frame * unet_flops + streams * reference_flops) / seconds
        print(f"   {streams:>7} {frames / seconds:>10.1f} {achieved / 1e12:>9.4f} {share_of_peak(achieved, peak):>8} "
              f"{peak_memory(device):>10}")


def diffusers_twin(unet: DenoisingUNet) -> torch.nn.Module:
    """diffusers' UNet2DModel with our block widths, residual blocks per level, attention levels (self-attention at
    each of our ReferenceAttention sites, in the middle block too when the last level has one) and time-embedding
    width; 12 input and 6 output channels, no conditioning. Heads: diffusers fixes the head width, not the count,
    so the count matches at the first attention level (the attention FLOPs do not depend on the split)."""
    from diffusers import UNet2DModel

    config = unet.config
    widths = [config.base_channels * m for m in config.channel_mult]
    levels = set(config.reference_levels)
    head_width = widths[min(levels)] // config.num_heads if levels else widths[0]
    return UNet2DModel(
        sample_size=config.sample_size, in_channels=12, out_channels=6, block_out_channels=tuple(widths),
        layers_per_block=config.num_res_blocks, norm_num_groups=config.groups, attention_head_dim=head_width,
        down_block_types=tuple("AttnDownBlock2D" if lv in levels else "DownBlock2D" for lv in range(len(widths))),
        up_block_types=tuple("AttnUpBlock2D" if lv in levels else "UpBlock2D" for lv in reversed(range(len(widths)))),
        add_attention=len(widths) - 1 in levels, time_embedding_dim=config.embedding_dim,
    ).eval()


def compare_with_diffusers(pipeline: EmoDiffPipeline, video: VideoConditions, args: argparse.Namespace,
                           unet_flops: int) -> None:
    """Part 6: one forward of a batch of --compare-batch frames through ours and through the diffusers twin, with the
    same --precision / --compile / --channels-last (ReferenceNet features computed beforehand, not timed)."""
    device = pipeline.device
    twin = diffusers_twin(pipeline.unet).to(device)
    x, t, inputs = forward_inputs(pipeline, video, args.compare_batch)
    twin_input = torch.cat([x, inputs["identity"], inputs["motion"]], 1)
    twin_flops = count_flops(lambda: twin(twin_input, t))
    prepare_modules(twin, [], device, pipeline.inference)
    with precision(pipeline):
        for _ in range(2):  # warm-up (compilation when --compile)
            pipeline.unet(x, t, **inputs)
            twin(twin_input, t)
        ours = twin_seconds = float("inf")
        for _ in range(3):  # interleaved, best of each
            ours = min(ours, median_seconds(lambda: pipeline.unet(x, t, **inputs), device, 5))
            twin_seconds = min(twin_seconds, median_seconds(lambda: twin(twin_input, t), device, 5))
    ours_params = sum(p.numel() for p in pipeline.unet.parameters()) / 1e6
    twin_params = sum(p.numel() for p in twin.parameters()) / 1e6
    ours_flops = unet_flops * args.compare_batch
    print(f"6. one forward of {args.compare_batch} frames: ours {ours * 1e3:.2f} ms ({ours_params:.1f} M parameters, "
          f"{ours_flops / 1e9:.2f} GFLOP), diffusers UNet2DModel {twin_seconds * 1e3:.2f} ms ({twin_params:.1f} M, "
          f"{twin_flops / 1e9:.2f} GFLOP); time ours ÷ diffusers {ours / twin_seconds:.2f}, "
          f"FLOPs ours ÷ diffusers {ours_flops / twin_flops:.2f}, TFLOP/s ours {ours_flops / ours / 1e12:.4f} vs "
          f"diffusers {twin_flops / twin_seconds / 1e12:.4f}")


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(Path(__file__).resolve().parents[1] / "configs" / "denoiser_tiny.yaml"))
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--sampler", default="ddim", choices=["ddpm", "ddim", "dpm++"])
    parser.add_argument("--seconds", type=float, default=1.0, help="video length for the overhead and batch parts")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", choices=list(PRECISIONS), default="fp32")
    parser.add_argument("--compile", action="store_true", help="torch.compile the denoiser (CUDA graphs on CUDA)")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--attention", choices=list(ATTENTION_BACKENDS))
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 8, 32, 128])
    parser.add_argument("--stream-frames", type=int, default=4, help="frames per stream in part 5")
    parser.add_argument("--cfg-audio", type=float, default=1.0, help="guidance in part 5")
    parser.add_argument("--cfg-exp", type=float, default=2.0, help="guidance in part 5 (2: the demo's)")
    parser.add_argument("--peak-tflops", type=float, help="the device's peak (default: looked up for H100/H200/A100)")
    parser.add_argument("--compare-batch", type=int, default=8, help="frames per forward in part 6")
    args = parser.parse_args()
    device = torch.device(args.device)
    pipeline = build_pipeline(args.config, args.resolution, device)
    fps = pipeline.settings["fps"]
    video = random_video(pipeline, args.seconds, seed=0)
    flops = forward_flops(pipeline, video)
    options = InferenceOptions(args.precision, args.channels_last, args.compile, args.attention)
    pipeline.accelerate_inference(options)
    print(f"device {device_name(device)}, {Path(args.config).name} at {args.resolution}², {args.sampler} × {args.steps} "
          f"steps, torch threads {torch.get_num_threads()}, {options}")

    if "overhead" in args.parts:
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

    if "memory" in args.parts:
        with tempfile.TemporaryDirectory() as tmp:
            short = streamed_peak_bytes(pipeline, random_video(pipeline, 2.0, seed=1), 2, Path(tmp) / "short.mp4")
            long = streamed_peak_bytes(pipeline, random_video(pipeline, 20.0, seed=2), 2, Path(tmp) / "long.mp4")
        kind = "CUDA allocator peak" if device.type == "cuda" else "process peak RSS"
        print(f"3. peak memory ({kind}), 2 s: {short / 2**20:.1f} MiB, 20 s: {long / 2**20:.1f} MiB, "
              f"ratio {long / short:.3f}   (flat ≈ 1)")

    if "batch" in args.parts:
        videos = [random_video(pipeline, args.seconds, seed=10 + v) for v in range(4)]
        singles = sum(sample_seconds(pipeline, [v], args.steps, args.sampler) for v in videos)
        batch = sample_seconds(pipeline, videos, args.steps, args.sampler)
        print(f"4. one batch of 4 videos: {batch:.2f} s vs 4 single runs: {singles:.2f} s, "
              f"throughput ×{singles / batch:.2f}   ({4 * video.n_frames / batch:.1f} frames/s at {fps:g} fps)")

    if "streams" in args.parts:
        stream_rates(pipeline, args, flops)
    if "diffusers" in args.parts:
        compare_with_diffusers(pipeline, video, args, flops[0])

if __name__ == "__main__":
    main()
