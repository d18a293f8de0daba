"""GPU-ready inference (`emodiff.inference`) exercised on the CPU: bf16 autocast, channels_last, torch.compile,
the attention backend switch, and the forwards-per-frame count the sampling benchmark divides by."""

from __future__ import annotations

import importlib.util
import shutil

import numpy as np
import pytest
import torch

from emodiff.cli import main as cli_main
from emodiff.control import parse_intensity
from emodiff.data.datasets import window_indices
from emodiff.data.synthetic import trained_world, unseen_identities
from emodiff.demo import bundled_checkpoint, demo_world
from emodiff.errors import EmodiffError
from emodiff.inference import InferenceOptions
from emodiff.models.reference_net import ReferenceNet
from emodiff.models.unet import DenoisingUNet
from emodiff.models.expression_reference import ExpressionReference
from emodiff.diffusion.gaussian import make_betas
from emodiff.diffusion.schedulers import make_scheduler
from emodiff.pipeline import EmoDiffPipeline, VideoConditions
from emodiff.sample import load_pipeline
from tests.test_pipeline import AUDIO_DIM, EXP_DIM, SIZE, collect, random_video, tiny_pipeline

HAS_XFORMERS = importlib.util.find_spec("xformers") is not None


@pytest.fixture(scope="module")
def demo_video() -> VideoConditions:
    """8 frames of the bundled (trained) demo pipeline's own conditions: a face of its world speaking its speech."""
    checkpoint = bundled_checkpoint()
    pipeline = load_pipeline(checkpoint)
    fps = pipeline.settings["fps"]
    world = demo_world(checkpoint, pipeline.settings["resolution"], fps)
    (face,) = unseen_identities(trained_world(checkpoint), 1)
    audio, _ = world.speech(8, parse_intensity("0.8", 8, fps), np.random.default_rng(0))
    return pipeline.conditions(world.portrait(face), audio, "happy", "0.8", aligned=True)


def demo_frames(video: VideoConditions, options: InferenceOptions = InferenceOptions(), seed: int = 3) -> torch.Tensor:
    pipeline = load_pipeline(bundled_checkpoint()).accelerate_inference(options)
    return collect(pipeline, [video], steps=8, seeds=[seed], cfg_expression=2.0)[0]


@pytest.fixture(scope="module")
def fp32_frames(demo_video) -> torch.Tensor:
    return demo_frames(demo_video)


def test_bf16_sampling_runs_in_bf16_and_stays_within_rounding_of_fp32(demo_video, fp32_frames):
    """Trained weights, 8 DDIM steps with expression guidance. bf16 keeps 8 significant bits, a relative rounding
    of 2^-8 ≈ 0.004 of values in [-1, 1]: the frames may differ from fp32 by about that (measured 0.003–0.004 mean
    per frame), bounded here by 0.01 (1.3 of 255 grey levels), well under what another seed changes (≥ 0.02), and
    the difference must not build up from frame to frame through the motion frames."""
    pipeline = load_pipeline(bundled_checkpoint()).accelerate_inference(InferenceOptions("bf16"))
    dtypes = set()
    pipeline.unet.trunk.input_conv.register_forward_hook(lambda module, inputs, output: dtypes.add(output.dtype))
    bf16 = collect(pipeline, [demo_video], steps=8, seeds=[3], cfg_expression=2.0)[0]
    assert dtypes == {torch.bfloat16}
    fp32, other_seed = fp32_frames, demo_frames(demo_video, seed=4)
    assert bf16.dtype == torch.float32 and bf16.shape == fp32.shape
    error = (bf16 - fp32).abs().mean((1, 2, 3))
    assert error.max() < 0.01
    assert error.mean() < (other_seed - fp32).abs().mean() / 3
    assert error[4:].mean() < 2 * error[:4].mean()


def test_channels_last_changes_the_layout_not_the_frames(demo_video, fp32_frames):
    pipeline = load_pipeline(bundled_checkpoint()).accelerate_inference(InferenceOptions(channels_last=True))
    weight = pipeline.unet.trunk.input_conv.weight
    assert weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
    frames = collect(pipeline, [demo_video], steps=8, seeds=[3], cfg_expression=2.0)[0]
    torch.testing.assert_close(frames, fp32_frames, rtol=0, atol=1e-3)  # summation order only


def minimal_pipeline() -> EmoDiffPipeline:
    """The smallest denoiser with every block kind (one level, one attention site), so inductor's C++ build is short;
    zero-initialised layers get small random weights so the frames depend on them."""
    torch.manual_seed(0)
    unet = DenoisingUNet(sample_size=SIZE, base_channels=8, channel_mult=(1,), num_res_blocks=1, reference_levels=(0,),
                         num_heads=1, groups=4, embedding_dim=8, audio_dim=AUDIO_DIM, expression_dim=EXP_DIM, window=2)
    with torch.no_grad():
        for param in unet.parameters():
            if not param.any():
                param.normal_(std=0.05)
    return EmoDiffPipeline(unet.eval(), ReferenceNet.matching(unet).eval(), ExpressionReference(expression_dim=EXP_DIM),
                           scheduler=make_scheduler("ddim", make_betas("linear", 1000)), resolution=SIZE,
                           window=2)


def test_compiled_denoiser_gives_the_eager_frames():
    if not any(shutil.which(compiler) for compiler in ("g++", "c++", "clang++")):
        pytest.skip("torch.compile's inductor backend needs a C++ compiler on the CPU, and none is installed")
    torch._dynamo.reset()
    videos = [random_video(2, seed=1)]
    eager = collect(minimal_pipeline(), videos, steps=2, seeds=[3])[0]
    compiled_pipeline = minimal_pipeline().accelerate_inference(InferenceOptions(compile=True))
    compiled = collect(compiled_pipeline, videos, steps=2, seeds=[3])[0]
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1  # the denoiser really went through dynamo
    torch.testing.assert_close(compiled, eager, rtol=0, atol=1e-3)  # fused kernels reorder float sums
    torch._dynamo.reset()


@pytest.mark.skipif(HAS_XFORMERS, reason="xformers is installed here")
def test_xformers_without_the_package_is_one_sentence():
    with pytest.raises(EmodiffError, match=r"needs the xformers package.*pip install emodiff\[xformers\]"):
        tiny_pipeline().accelerate_inference(InferenceOptions(attention="xformers"))
    with pytest.raises(EmodiffError, match="needs the xformers package"):
        DenoisingUNet(sample_size=SIZE, base_channels=16, channel_mult=(1,), reference_levels=(0,), groups=8,
                      attention_backend="xformers")


def test_fp16_on_cpu_is_one_sentence_and_bf16_runs_from_the_command_line(tmp_path, capsys):
    out = tmp_path / "demo"
    assert cli_main(["demo", "--out", str(out), "--precision", "fp16"]) == 1
    assert "fp16 precision needs a CUDA device" in capsys.readouterr().err
    assert not out.exists()
    assert cli_main(["demo", "--out", str(out), "--steps", "1", "--precision", "bf16", "--channels-last",
                     "--attention", "sdpa"]) == 0
    assert (out / "demo.mp4").stat().st_size > 0


@pytest.mark.parametrize("cfg_audio, cfg_expression, rows", [(1.0, 1.0, 1), (1.0, 2.0, 2), (1.5, 1.0, 3), (1.5, 2.0, 3)])
def test_forwards_per_frame_counts_the_rows_sampling_runs(cfg_audio, cfg_expression, rows):
    pipeline = tiny_pipeline()
    batch_rows = []
    pipeline.unet.register_forward_hook(lambda module, inputs, output: batch_rows.append(len(output)))
    videos = [random_video(3, seed=1), random_video(2, seed=2)]
    collect(pipeline, videos, steps=3, cfg_audio=cfg_audio, cfg_expression=cfg_expression)
    per_frame = pipeline.forwards_per_frame(3, cfg_audio, cfg_expression)
    assert per_frame == 3 * rows
    assert sum(batch_rows) == per_frame * (3 + 2)


def test_sampling_flops_are_forwards_per_frame_unet_forwards_plus_one_reference_net_forward():
    """The accounting of benchmarks/bench_sample.py: a video of T frames costs T × forwards_per_frame one-row UNet
    forwards and one ReferenceNet forward (FLOPs are linear in the batch rows), attention included (torch's counter
    alone gives the CPU attention kernel 0 FLOPs)."""
    from torch.utils.flop_counter import FlopCounterMode

    from benchmarks.throughput import count_flops as flops

    pipeline, video = tiny_pipeline(), random_video(2, seed=1)
    window = window_indices(0, 2, video.n_frames)
    identity = video.identity[None]
    features = pipeline.reference_net(identity)
    one_unet = flops(lambda: pipeline.unet(torch.randn_like(identity), torch.tensor(500), identity,
                                           identity.repeat(1, 2, 1, 1), video.audio[window][None],
                                           video.expression[window][None], features))
    one_reference = flops(lambda: pipeline.reference_net(identity))
    sampled = flops(lambda: collect(pipeline, [video], steps=3, cfg_audio=1.5, cfg_expression=2.0))
    assert sampled == 2 * pipeline.forwards_per_frame(3, 1.5, 2.0) * one_unet + one_reference
    with FlopCounterMode(display=False) as without_attention:
        pipeline.reference_net(identity)
    assert one_reference > without_attention.get_total_flops() > 0
