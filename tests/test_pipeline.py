"""EmoDiffPipeline: the saved folder, and the autoregressive batched sampler of paper §3.4."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from emodiff.data.datasets import window_indices
from emodiff.data.labels import EMOTIONS
from emodiff.errors import EmodiffError
from emodiff.models.expression_gan import ExpressionGenerator
from emodiff.models.reference_net import ReferenceNet
from emodiff.models.rrdbnet import RRDBNet
from emodiff.models.unet import DenoisingUNet
from emodiff.models.expression_reference import ExpressionReference
from emodiff.diffusion.gaussian import make_betas
from emodiff.diffusion.schedulers import make_scheduler
from emodiff.pipeline import EmoDiffPipeline, VideoConditions
from tests.conftest import write_random_store

SIZE, AUDIO_DIM, EXP_DIM = 16, 8, 6


def tiny_pipeline(seed: int = 0, super_resolution: RRDBNet | None = None, audio_dim: int = AUDIO_DIM,
                  expression_encoder: str = "interpolation") -> EmoDiffPipeline:
    """A random tiny pipeline; zero-initialised layers (output, FiLM) get small random weights so that the
    prediction depends on every input."""
    torch.manual_seed(seed)
    unet = DenoisingUNet(sample_size=SIZE, base_channels=16, channel_mult=(1, 2, 2), num_res_blocks=1,
                         reference_levels=(1, 2), num_heads=2, groups=8, embedding_dim=32, audio_dim=audio_dim,
                         expression_dim=EXP_DIM, window=2, expression_encoder=expression_encoder)
    with torch.no_grad():
        for param in unet.parameters():
            if not param.any():
                param.normal_(std=0.05)
    reference = ExpressionReference(expression_dim=EXP_DIM)
    reference.targets.normal_()
    return EmoDiffPipeline(unet.eval(), ReferenceNet.matching(unet).eval(), reference, super_resolution=super_resolution,
                           scheduler=make_scheduler("ddim", make_betas("linear", 1000)), resolution=SIZE,
                           window=2, fps=25.0)


def random_video(n_frames: int, seed: int, emotion: int = 5) -> VideoConditions:
    gen = torch.Generator().manual_seed(seed)
    k = torch.linspace(0, 1, n_frames)
    weights = torch.zeros(n_frames, len(EMOTIONS))
    weights[:, emotion] = 1
    return VideoConditions(identity=torch.rand(3, SIZE, SIZE, generator=gen) * 2 - 1,
                           audio=torch.randn(n_frames, AUDIO_DIM, generator=gen),
                           expression=k[:, None] * torch.randn(EXP_DIM, generator=gen),
                           intensity=k, emotion_weights=weights)


def collect(pipeline: EmoDiffPipeline, videos: list[VideoConditions], **kwargs) -> list[torch.Tensor]:
    frames: list[list[torch.Tensor]] = [[] for _ in videos]
    for _, batch in pipeline.sample(videos, progress=False, **kwargs):
        for v, frame in batch.items():
            frames[v].append(frame)
    return [torch.stack(f) for f in frames]


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpm++"])
def test_batch_equals_single_runs_and_seed_determines_video(sampler):
    pipeline = tiny_pipeline()
    videos = [random_video(4, seed=1), random_video(2, seed=2, emotion=1)]
    batched = collect(pipeline, videos, steps=3, sampler=sampler, seeds=[10, 11])
    assert [len(v) for v in batched] == [4, 2]
    singles = [collect(pipeline, [video], steps=3, sampler=sampler, seeds=[seed])[0]
               for video, seed in zip(videos, [10, 11])]
    for b, s in zip(batched, singles):
        torch.testing.assert_close(b, s, rtol=1e-3, atol=1e-3)  # batched float sums differ slightly
    again = collect(pipeline, videos[:1], steps=3, sampler=sampler, seeds=[10])[0]
    assert torch.equal(again, singles[0])
    other = collect(pipeline, videos[:1], steps=3, sampler=sampler, seeds=[12])[0]
    assert (other - singles[0]).abs().mean() > 1e-2


def test_reference_net_once_and_motion_frames_are_previous_outputs():
    pipeline = tiny_pipeline()
    reference_calls, calls = [], []
    pipeline.reference_net.register_forward_hook(lambda module, args, out: reference_calls.append(args[0].shape[0]))
    pipeline.unet.register_forward_pre_hook(lambda module, args, kwargs: calls.append(dict(kwargs)), with_kwargs=True)
    videos = [random_video(3, seed=1), random_video(3, seed=2)]
    steps = 2
    outputs = collect(pipeline, videos, steps=steps, sampler="ddim", seeds=[0, 1])
    assert reference_calls == [2]  # one call for the whole batch of two videos, for all frames and steps
    assert len(calls) == 3 * steps
    motions = [call["motion"] for call in calls]
    for i, call in enumerate(calls[::steps]):  # the condition windows are those of training (edges repeat)
        window = window_indices(i, 2, 3)
        torch.testing.assert_close(call["audio"], torch.stack([v.audio[window] for v in videos]))
        torch.testing.assert_close(call["expression"], torch.stack([v.expression[window] for v in videos]))
        torch.testing.assert_close(call["intensity"], torch.stack([v.intensity[i] for v in videos]))
    identity = torch.stack([v.identity for v in videos])
    first, second, third = motions[0], motions[steps], motions[2 * steps]
    torch.testing.assert_close(first, torch.cat([identity, identity], 1))
    torch.testing.assert_close(second, torch.cat([identity, torch.stack([o[0] for o in outputs])], 1))
    torch.testing.assert_close(third, torch.cat([torch.stack([o[0] for o in outputs]),
                                                 torch.stack([o[1] for o in outputs])], 1))
    # Teacher forcing: given the real frames, the motion frames are the real previous ones, not the outputs.
    real = [torch.rand(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(v)) * 2 - 1 for v in range(2)]
    calls.clear()
    forced = collect(pipeline, videos, steps=steps, sampler="ddim", seeds=[0, 1], real_frames=real)
    torch.testing.assert_close(forced[0][0], outputs[0][0])  # the first frame sees the identity either way
    torch.testing.assert_close(calls[2 * steps]["motion"], torch.cat([torch.stack([r[0] for r in real]),
                                                                      torch.stack([r[1] for r in real])], 1))


def test_guidance_runs_in_one_batch_and_scales_conditions():
    pipeline = tiny_pipeline()
    batch_sizes = []
    pipeline.unet.register_forward_pre_hook(lambda module, args: batch_sizes.append(args[0].shape[0]))
    video = [random_video(2, seed=3)]
    plain = collect(pipeline, video, steps=2, sampler="ddim", seeds=[0])[0]
    assert batch_sizes == [1] * 4
    batch_sizes.clear()
    unit = collect(pipeline, video, steps=2, sampler="ddim", seeds=[0], cfg_audio=1.0, cfg_expression=1.0)[0]
    torch.testing.assert_close(unit, plain)
    batch_sizes.clear()
    guided = collect(pipeline, video, steps=2, sampler="ddim", seeds=[0], cfg_audio=3.0, cfg_expression=2.0)[0]
    assert batch_sizes == [3] * 4  # conditional, audio-only and unconditional rows in one forward per step
    assert (guided - plain).abs().mean() > 1e-3


class KnownEpsilon(torch.nn.Module):
    """A stand-in denoiser whose ε is a known function of x and of the conditions it keeps:
    ε = x/10 + A + E + 3·A·E, with A = mean audio (0 when dropped) and E = mean expression (0 when dropped);
    its variance channels say which guidance row they came from (audio kept + 2·expression kept)."""

    dtype = torch.float32
    config = {"prediction_type": "epsilon", "guidance_scales": None}

    def __init__(self):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # gives the pipeline a device

    def forward(self, x, t, *, audio, expression, audio_keep, expression_keep, **_):
        a = torch.where(audio_keep, audio.mean(dim=(1, 2)), 0.0)[:, None, None, None]
        e = torch.where(expression_keep, expression.mean(dim=(1, 2)), 0.0)[:, None, None, None]
        eps = x / 10 + a + e + 3 * a * e
        row = audio_keep.float() + 2 * expression_keep.float()
        return torch.cat([eps, row[:, None, None, None].expand_as(x)], 1)


@pytest.mark.parametrize("cfg_audio, cfg_expression", [(3.0, 2.0), (1.0, 2.5), (2.0, 1.0)])
def test_guidance_combines_the_predictions_exactly(monkeypatch, cfg_audio, cfg_expression):
    """ε̂ = ε(∅,∅) + s_a·(ε(a,∅) − ε(∅,∅)) + s_e·(ε(a,e) − ε(a,∅)) = x/10 + s_a·A + s_e·(E + 3AE), variance from ε(a,e)."""
    import emodiff.diffusion.sampling as sampling

    pipeline = tiny_pipeline()
    pipeline.unet = KnownEpsilon()
    seen = []
    original = sampling.scheduler_model_output
    monkeypatch.setattr(sampling, "scheduler_model_output",
                        lambda scheduler, prediction: seen.append(prediction) or original(scheduler, prediction))
    videos = [random_video(2, seed=3), random_video(2, seed=4)]
    inputs = []
    pipeline.unet.register_forward_pre_hook(lambda module, args, kwargs: inputs.append((args[0], kwargs)), with_kwargs=True)
    collect(pipeline, videos, steps=2, sampler="ddim", seeds=[0, 1], cfg_audio=cfg_audio, cfg_expression=cfg_expression)
    assert len(seen) == len(inputs) == 2 * 2  # frames × steps, one UNet call each
    for prediction, (x, kwargs) in zip(seen, inputs):
        n = len(videos)
        x = x[:n]
        a = kwargs["audio"][:n].mean(dim=(1, 2))[:, None, None, None]
        e = kwargs["expression"][:n].mean(dim=(1, 2))[:, None, None, None]
        torch.testing.assert_close(prediction[:, :3], x / 10 + cfg_audio * a + cfg_expression * (e + 3 * a * e))
        torch.testing.assert_close(prediction[:, 3:], torch.full_like(x, 3.0))


@pytest.mark.parametrize("encoder", ["renorm", "concat", "scaling"])
def test_intensity_variants_receive_each_frames_emotion_and_k(encoder):
    pipeline = tiny_pipeline(expression_encoder=encoder)
    calls = []
    pipeline.unet.register_forward_pre_hook(lambda module, args, kwargs: calls.append(kwargs), with_kwargs=True)
    video = random_video(4, seed=1)
    video.emotion_weights[2:] = torch.eye(len(EMOTIONS))[1]  # happy for two frames, then angry
    video.intensity = torch.tensor([0.1, 0.9, 0.4, 0.7])
    frames = collect(pipeline, [video], steps=2, sampler="ddim", seeds=[0])[0]
    assert [c["emotion"].tolist() for c in calls[::2]] == [[5], [5], [1], [1]]
    assert [c["intensity"].item() for c in calls[::2]] == pytest.approx([0.1, 0.9, 0.4, 0.7])
    # the encoder's embedding, and through it the frame, moves with k and with the emotion
    video.intensity = torch.tensor([0.9, 0.1, 0.4, 0.7])
    changed = collect(pipeline, [video], steps=2, sampler="ddim", seeds=[0])[0]
    assert (changed[0] - frames[0]).abs().mean() > 1e-3


def test_super_resolution_is_applied_per_frame():
    sr = RRDBNet(scale=2, num_feat=8, num_block=1, num_grow_ch=4)
    pipeline = tiny_pipeline(super_resolution=sr)
    frames = collect(pipeline, [random_video(2, seed=1)], steps=2, sampler="ddim", seeds=[0])[0]
    assert frames.shape == (2, 3, 2 * SIZE, 2 * SIZE)
    assert frames.min() >= -1 and frames.max() <= 1


def test_save_and_load_round_trip(tmp_path):
    pipeline = tiny_pipeline(super_resolution=RRDBNet(scale=2, num_feat=8, num_block=1, num_grow_ch=4))
    pipeline.save_pretrained(tmp_path / "pipe")
    index = json.loads((tmp_path / "pipe" / "model_index.json").read_text())
    assert index["unet"] == ["emodiff.models.unet", "DenoisingUNet"]
    assert index["expression_generator"] == [None, None]
    assert index["scheduler"] == ["diffusers", "DDIMScheduler"] and "diffusion" not in index
    assert (tmp_path / "pipe" / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert (tmp_path / "pipe" / "scheduler" / "scheduler_config.json").is_file()
    loaded = EmoDiffPipeline.from_pretrained(tmp_path / "pipe")
    assert loaded.settings == pipeline.settings and loaded.sampler == "ddim"
    public = lambda config: {key: value for key, value in config.items() if not key.startswith("_")}  # noqa: E731
    assert public(loaded.scheduler.config) == public(pipeline.scheduler.config)
    torch.testing.assert_close(loaded.expression_reference.targets, pipeline.expression_reference.targets)
    video = [random_video(2, seed=1)]
    torch.testing.assert_close(collect(loaded, video, steps=2, sampler="dpm++", seeds=[5])[0],
                               collect(pipeline, video, steps=2, sampler="dpm++", seeds=[5])[0])


def test_a_folder_written_before_a_class_moved_still_loads(tmp_path, monkeypatch):
    """ExpressionReference lived in emodiff.pipeline until it moved to emodiff.models (the bundled demo's index named
    the old place); folders that name a moved class load it from where it lives now."""
    pipeline = tiny_pipeline()
    pipeline.save_pretrained(tmp_path / "pipe")
    index_path = tmp_path / "pipe" / "model_index.json"
    index = json.loads(index_path.read_text())
    assert index["expression_reference"] == ["emodiff.models.expression_reference", "ExpressionReference"]
    index["expression_reference"] = ["emodiff.pipeline", "ExpressionReference"]
    index_path.write_text(json.dumps(index))
    monkeypatch.delattr("emodiff.pipeline.ExpressionReference")  # the loader must not rely on what pipeline imports
    loaded = EmoDiffPipeline.from_pretrained(tmp_path / "pipe")
    assert isinstance(loaded.expression_reference, ExpressionReference)
    torch.testing.assert_close(loaded.expression_reference.neutral, pipeline.expression_reference.neutral)


def test_a_folder_written_before_schedulers_were_saved_samples_as_before(tmp_path):
    """Folders written before the scheduler was a component hold the training's β settings in model_index.json and no
    scheduler/; they load with the DDIM scheduler they sampled with, and give the frames a new folder gives."""
    tiny_pipeline().save_pretrained(tmp_path / "new")
    shutil.copytree(tmp_path / "new", tmp_path / "pipe")
    index_path = tmp_path / "pipe" / "model_index.json"
    index = json.loads(index_path.read_text())
    del index["scheduler"]
    index["diffusion"] = {"beta_schedule": "linear", "num_train_timesteps": 1000}
    index_path.write_text(json.dumps(index))
    shutil.rmtree(tmp_path / "pipe" / "scheduler")
    loaded = EmoDiffPipeline.from_pretrained(tmp_path / "pipe")
    assert loaded.sampler == "ddim"
    video = [random_video(3, seed=2)]
    new = EmoDiffPipeline.from_pretrained(tmp_path / "new")
    torch.testing.assert_close(collect(loaded, video, steps=3, seeds=[1])[0], collect(new, video, steps=3, seeds=[1])[0],
                               rtol=0, atol=0)


def test_a_pipeline_samples_with_its_own_scheduler_unless_a_call_names_another(tmp_path):
    pipeline = tiny_pipeline()
    pipeline.scheduler = make_scheduler("dpm++", make_betas("linear", 1000))
    pipeline.save_pretrained(tmp_path / "pipe")
    loaded = EmoDiffPipeline.from_pretrained(tmp_path / "pipe")
    assert loaded.sampler == "dpm++" and "dpm++ × 25 steps" in loaded.describe_sampling()
    video = [random_video(3, seed=2)]
    own = collect(loaded, video, steps=2, seeds=[1])[0]
    torch.testing.assert_close(own, collect(loaded, video, steps=2, sampler="dpm++", seeds=[1])[0], rtol=0, atol=0)
    assert (own - collect(loaded, video, steps=2, sampler="ddim", seeds=[1])[0]).abs().max() > 1e-3


def test_missing_or_corrupt_checkpoint_is_one_sentence(tmp_path):
    with pytest.raises(EmodiffError, match="model_index.json is missing"):
        EmoDiffPipeline.from_pretrained(tmp_path / "nothing")
    tiny_pipeline().save_pretrained(tmp_path / "pipe")
    weights = tmp_path / "pipe" / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(EmodiffError, match="Cannot load the unet"):
        EmoDiffPipeline.from_pretrained(tmp_path / "pipe")
    index = tmp_path / "pipe" / "model_index.json"
    index.write_text(json.dumps({**json.loads(index.read_text()), "unet": ["os", "system"]}))
    with pytest.raises(EmodiffError, match="only emodiff classes"):
        EmoDiffPipeline.from_pretrained(tmp_path / "pipe")
    index.write_text("{broken")
    with pytest.raises(EmodiffError, match="not valid JSON"):
        EmoDiffPipeline.from_pretrained(tmp_path / "pipe")
    tiny_pipeline().save_pretrained(tmp_path / "other")
    index = tmp_path / "other" / "model_index.json"
    index.write_text(json.dumps({**json.loads(index.read_text()), "scheduler": ["diffusers", "EulerDiscreteScheduler"]}))
    with pytest.raises(EmodiffError, match="only DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler of diffusers"):
        EmoDiffPipeline.from_pretrained(tmp_path / "other")
    (tmp_path / "other" / "model_index.json").write_text(json.dumps({**json.loads(index.read_text()),
                                                                     "scheduler": ["diffusers", "DDIMScheduler"]}))
    (tmp_path / "other" / "scheduler" / "scheduler_config.json").write_text("{broken")
    with pytest.raises(EmodiffError, match="Cannot load the scheduler"):
        EmoDiffPipeline.from_pretrained(tmp_path / "other")


def test_expression_condition_moves_linearly_from_neutral_to_target(tmp_path):
    store = write_random_store(tmp_path / "store", n_clips=8, exp_dim=EXP_DIM)
    reference = ExpressionReference.from_store(store)
    neutral_clip = store.clip("clip000")
    np.testing.assert_allclose(reference.neutral.numpy(), np.asarray(neutral_clip.expression).mean(0), rtol=1e-5)
    pipeline = tiny_pipeline()
    pipeline.expression_reference = reference
    weights = np.zeros((11, len(EMOTIONS)), dtype=np.float32)
    weights[:, EMOTIONS.index("happy")] = 1
    k = np.linspace(0, 1, 11, dtype=np.float32)
    e_o = pipeline.expression_sequence(weights, k)
    happy = reference.targets[EMOTIONS.index("happy")].numpy()
    np.testing.assert_allclose(e_o[0], reference.neutral.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(e_o[-1], happy, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.diff(e_o, axis=0), np.broadcast_to((happy - reference.neutral.numpy()) / 10, (10, EXP_DIM)),
                               rtol=1e-4, atol=1e-5)


def test_expression_generator_supplies_neutral_and_target_sequences(tmp_path):
    torch.manual_seed(0)
    pipeline = tiny_pipeline()
    pipeline.expression_generator = ExpressionGenerator(expression_dim=EXP_DIM, hidden=16).eval()
    weights = np.zeros((8, len(EMOTIONS)), dtype=np.float32)
    weights[:, EMOTIONS.index("sad")] = 1
    k = np.array([0, 0, 0, 0, 1, 1, 1, 1], dtype=np.float32)
    e_o = pipeline.expression_sequence(weights, k, seed=3)
    z = pipeline.expression_generator.sample_noise(1, 8, torch.Generator().manual_seed(3))
    with torch.no_grad():
        neutral, sad = pipeline.expression_generator(torch.tensor([0, EMOTIONS.index("sad")]), z.expand(2, -1, -1))
    np.testing.assert_allclose(e_o[:4], neutral[:4].numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(e_o[4:], sad[4:].numpy(), rtol=1e-5, atol=1e-6)
    assert not np.allclose(pipeline.expression_sequence(weights, k, seed=4), e_o)
    pipeline.save_pretrained(tmp_path / "pipe")
    loaded = EmoDiffPipeline.from_pretrained(tmp_path / "pipe")
    np.testing.assert_allclose(loaded.expression_sequence(weights, k, seed=3), e_o, rtol=1e-5, atol=1e-6)
