"""`emodiff assemble`: training runs → a pipeline folder that `emodiff sample --checkpoint` loads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from emodiff import assemble
from emodiff.cli import main
from emodiff.data.labels import EMOTIONS
from emodiff.data.synthetic import make_store
from emodiff.errors import EmodiffError
from emodiff.models.rrdbnet import RRDBNet
from emodiff.pipeline import EmoDiffPipeline, VideoConditions
from emodiff.train import denoiser, expression_gan, intensity
from emodiff.train.common import CONFIG_DIR, load_config


def _train(module, config_name: str, store, out, overrides=()) -> None:
    config = load_config(CONFIG_DIR / config_name, [f"data.store={store}", f"output_dir={out}", "train.max_steps=2",
                                                    *overrides])
    module.train(config)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    store = make_store(root / "store", n_identities=2, clips_per_identity=3, n_frames=32, size=16, levels=(3,))
    _train(denoiser, "denoiser_tiny.yaml", store.root, root / "denoiser", ["train.validate_every=100"])
    _train(expression_gan, "expression_gan.yaml", store.root, root / "expression",
           ["data.window=8", "data.stride=8", "train.batch_size=4", "model.generator.hidden=16",
            "model.global_discriminator.hidden=16", "model.local_discriminator.hidden=16"])
    _train(intensity, "intensity.yaml", store.root, root / "intensity",
           ["data.window=16", "data.stride=8", "train.batch_size=4", "model.hidden=8"])
    return root, store


def _assemble(**kwargs) -> int:
    """`emodiff assemble --KEY VALUE ...` through the command line's entry point."""
    return main(["assemble", *[item for key, value in kwargs.items() for item in (f"--{key}", str(value))]])


def test_assembled_folder_loads_with_every_run_and_samples(runs):
    root, store = runs
    out = root / "pipeline"
    RRDBNet(scale=2, num_feat=4, num_block=1, num_grow_ch=4, residual=True).save_pretrained(root / "sr" / "super_resolution")
    assert _assemble(denoiser=root / "denoiser", store=store.root, expression=root / "expression",
                     intensity=root / "intensity", **{"super-resolution": root / "sr"}, out=out, steps=3,
                     sampler="dpm++", **{"cfg-exp": 2}) == 0
    pipeline = EmoDiffPipeline.from_pretrained(out)
    # the synthetic world travels with the pipeline, so `emodiff demo --checkpoint` renders the same world
    assert (out / "synthetic_world.json").read_text() == (store.stats_dir / "synthetic_world.json").read_text()
    assert pipeline.expression_generator is not None and pipeline.intensity_predictor is not None
    assert pipeline.super_resolution.config.scale == 2
    assert pipeline.settings["resolution"] == 16 and pipeline.settings["fps"] == 25
    # e_y of the stored targets: the mean expression of the strongest clips
    angry = [store.clip(i) for i in store.clip_ids() if "_angry_" in i]
    assert torch.allclose(pipeline.expression_reference.targets[EMOTIONS.index("angry")],
                          torch.from_numpy(np.concatenate([c.expression for c in angry]).mean(0)), atol=1e-5)
    clip = store.clip(store.clip_ids()[0])
    n = 3
    k = np.linspace(0, 1, n)
    weights = np.zeros((n, len(EMOTIONS)), np.float32)
    weights[:, EMOTIONS.index("angry")] = 1
    video = VideoConditions(identity=torch.zeros(3, 16, 16), audio=torch.as_tensor(np.asarray(clip.audio_feats[:n], np.float32)),
                            expression=torch.as_tensor(pipeline.expression_sequence(weights, k), dtype=torch.float32),
                            intensity=torch.as_tensor(k, dtype=torch.float32), emotion_weights=torch.as_tensor(weights))
    rows = []
    pipeline.unet.register_forward_hook(lambda module, args, output: rows.append(len(output)))
    frames = [f[0] for _, f in pipeline.sample([video], progress=False)]
    assert len(frames) == n and frames[0].shape == (3, 32, 32) and torch.isfinite(torch.stack(frames)).all()
    # A call that names no sampling settings uses the ones the pipeline recorded: its DPM-Solver++ scheduler, 3 steps,
    # each one batch of the conditional and the expression-dropped rows (expression guidance 2).
    assert rows == [2] * (3 * n)
    assert pipeline.sampler == "dpm++" and (out / "scheduler" / "scheduler_config.json").is_file()
    assert pipeline.describe_sampling().endswith("dpm++ × 3 steps, guidance audio 1 / expression 2: "
                                                 "6 UNet forwards per frame")


def test_without_optional_runs_and_bad_runs_are_one_sentence(runs):
    root, store = runs
    out = root / "plain"
    assemble.assemble(root / "denoiser", store.root, out)
    plain = EmoDiffPipeline.from_pretrained(out)
    assert plain.expression_generator is None and plain.intensity_predictor is None
    assert plain.default_steps == 25 and plain.guidance_scales(None, None) == (1.0, 1.0)  # none recorded
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(EmodiffError, match="not a finished `emodiff train expression` folder"):
        assemble.assemble(root / "denoiser", store.root, out, expression=root / "intensity")
    with pytest.raises(EmodiffError, match="not a finished denoiser training folder"):
        assemble.assemble(root / "expression", store.root, out)
    assert sorted(p.name for p in out.iterdir()) == before  # the existing folder is untouched
    assert not list(root.glob(".plain.tmp-*"))


def test_bundled_demo_checkpoint_loads_complete():
    demo = EmoDiffPipeline.from_pretrained(Path(assemble.__file__).parent / "assets" / "demo")
    assert demo.settings["resolution"] == 32 and demo.settings["audio_features"] == "mel"
    assert all(component is not None for component in demo.components().values())
    assert demo.super_resolution.config.scale == 4  # the demo writes 128 px
    # the sampling of the synthetic report, which demo, sample and app use by default
    assert demo.default_steps == 16 and demo.guidance_scales(None, None) == (1.0, 2.0)


def test_store_without_neutral_clips_assembles_from_its_calmest_frames(runs, tmp_path, capsys):
    root, _ = runs
    emotional = make_store(tmp_path / "emotional", n_identities=2, clips_per_identity=2, n_frames=32, size=16,
                           emotions=("happy", "sad"), levels=(3,), seed=3)
    out = tmp_path / "pipeline"
    assert _assemble(denoiser=root / "denoiser", store=emotional.root, out=out) == 0
    assert "no neutral clips" in capsys.readouterr().out
    reference = EmoDiffPipeline.from_pretrained(out).expression_reference
    assert reference.config.neutral_source == "calmest frames"
    assert reference.config.emotions == ["neutral", "happy", "sad"]
    # e_n is far closer to the world's neutral (the origin) than the happy target is
    happy = reference.targets[EMOTIONS.index("happy")]
    assert reference.neutral.norm() < 0.5 * happy.norm()
    weights = np.zeros((4, len(EMOTIONS)), np.float32)
    weights[:, EMOTIONS.index("angry")] = 1
    with pytest.raises(EmodiffError, match=r"trained without angry clips, so it cannot show angry; it knows: neutral, happy, sad\."):
        EmoDiffPipeline.from_pretrained(out).expression_sequence(weights, np.ones(4, np.float32))
