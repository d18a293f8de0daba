"""Intensity-control variants of the framewise intensity paper (Table 3) as denoiser expression encoders."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from emodiff.control.intensity import IntensityMeasure
from emodiff.diffusion.gaussian import GaussianDiffusion
from emodiff.errors import EmodiffError
from emodiff.models.conditioning import build_expression_encoder
from emodiff.models.reference_net import ReferenceNet
from emodiff.models.unet import DenoisingUNet
from emodiff.train.common import CONFIG_DIR, load_config
from emodiff.train.denoiser import compute_losses

VARIANTS = ("renorm", "concat", "scaling")


def random_batch(batch: int = 4) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "target": torch.rand(batch, 3, 16, 16, generator=g) * 2 - 1,
        "identity": torch.rand(batch, 3, 16, 16, generator=g) * 2 - 1,
        "motion": torch.rand(batch, 6, 16, 16, generator=g) * 2 - 1,
        "audio": torch.randn(batch, 5, 12, generator=g),
        "expression": torch.randn(batch, 5, 6, generator=g),
        "intensity": torch.rand(batch, generator=g),
        "emotion": torch.tensor([0, 5, -1, 7]),  # neutral, happy, unlabelled, surprised
        "mouth_mask": torch.ones(batch, 1, 16, 16),
        "eye_mask": torch.ones(batch, 1, 16, 16),
    }


@pytest.mark.parametrize("name", VARIANTS)
def test_variant_trains_denoiser_steps(name):
    torch.manual_seed(0)
    config = load_config(CONFIG_DIR / "denoiser_tiny.yaml")
    unet = DenoisingUNet(sample_size=16, window=2, audio_dim=12, expression_dim=6,
                         **{**OmegaConf.to_container(config.unet), "expression_encoder": name})
    reference_net = ReferenceNet.matching(unet)
    diffusion = GaussianDiffusion.from_config(config.diffusion)
    encoder = unet.expression_embedding
    before = encoder.emotion.weight.detach().clone()
    optimizer = torch.optim.AdamW([*unet.parameters(), *reference_net.parameters()], lr=1e-3)
    batch = random_batch()
    for _ in range(3):  # the zero-initialised output layer passes gradients to the encoder from step 2 on
        losses = compute_losses(batch, unet, reference_net, diffusion, config)
        assert ("norm" in losses) == (name == "renorm")  # compute_losses adds λ_norm·L_norm for renorm
        loss = losses["loss"]
        assert torch.isfinite(loss)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    moved = (encoder.emotion.weight - before).norm(dim=1)
    assert (moved[[5, 7, 8]] > 0).all()  # happy, surprised and the unlabelled row were trained


@pytest.mark.parametrize("name", VARIANTS)
def test_embedding_moves_monotonically_with_intensity(name):
    torch.manual_seed(0)
    encoder = build_expression_encoder(name, expression_dim=6, window=2, dim=32, num_emotions=8)
    k = torch.linspace(0, 1, 11)
    with torch.no_grad():
        for emotion in range(1, 8):
            emb = encoder(None, torch.full((11,), emotion), k)
            distance = (emb - emb[0]).norm(dim=1)
            assert (distance.diff() > 0).all(), (name, emotion)
            # Equal intensity steps are equal embedding steps (a linear path in k).
            torch.testing.assert_close(distance, distance[-1] * k, atol=1e-5, rtol=1e-4)
            if name != "concat":  # the emotion's direction is fixed; k = 0 is the origin
                assert emb[0].norm() < 1e-6
                cosine = torch.nn.functional.cosine_similarity(emb[1:], emb[-1:].expand(10, -1))
                torch.testing.assert_close(cosine, torch.ones(10))


def test_renorm_norm_encodes_intensity_and_l_norm_centres_neutral():
    torch.manual_seed(0)
    encoder = build_expression_encoder("renorm", expression_dim=6, window=2, dim=32, num_emotions=8)
    k = torch.tensor([0.25, 0.5, 1.0])
    with torch.no_grad():
        norms = encoder(None, torch.tensor([1, 5, 7]), k).norm(dim=1)
    torch.testing.assert_close(norms, k * 32 ** 0.5)  # t(k) = k·√dim, whatever the emotion
    neutral = torch.zeros(4, dtype=torch.long)
    start = encoder(None, neutral, torch.rand(4)).norm(dim=1)[0].item()
    optimizer = torch.optim.Adam(encoder.parameters(), lr=1e-2)
    for _ in range(100):
        loss = encoder.norm_loss(neutral)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    end = encoder(None, neutral, torch.rand(4)).norm(dim=1)[0].item()
    print(f"renorm neutral latent norm {start:.3f} → {end:.4f} after 100 L_norm steps")
    assert end < 0.05 * start
    assert encoder.norm_loss(torch.tensor([1, 2])).item() == 0.0  # L_norm only applies to neutral


def test_variants_need_emotion_and_intensity():
    encoder = build_expression_encoder("scaling", expression_dim=6, window=2, dim=32, num_emotions=8)
    with pytest.raises(EmodiffError, match="'scaling' expression encoder needs an emotion label"):
        encoder(torch.zeros(2, 5, 6), None, None)


def test_every_variant_is_trained_on_the_k_of_the_interpolation(tmp_path):
    """The variants' training k is read back from each frame's expression by the inverse of eq. 14 with the
    store's e_n and e_y, so k = 1 is the strongest level's mean expression for them as for `interpolation`."""
    from emodiff.control.intensity import interpolate_expression
    from emodiff.data.datasets import FrameDataset
    from emodiff.data.expression import strongest_level_expressions
    from emodiff.data.synthetic import make_store
    from emodiff.models.conditioning import uses_intensity

    store = make_store(tmp_path / "store", n_identities=2, clips_per_identity=5, n_frames=20, size=16,
                       emotions=("neutral", "happy", "sad"), levels=(1, 3))
    assert [uses_intensity(name) for name in ("interpolation", *VARIANTS)] == [False, True, True, True]
    dataset = FrameDataset(store, resolution=16, intensity_measure=IntensityMeasure.from_store(store))
    k: dict[tuple[str, int], list[float]] = {}
    truth: dict[tuple[str, int], list[float]] = {}
    for index in range(len(dataset)):
        c, i = dataset.locate(index)
        clip = dataset.clips[c]
        k.setdefault((clip.emotion, clip.level), []).append(dataset[index]["intensity"].item())
        truth.setdefault((clip.emotion, clip.level), []).append(float(clip.intensity[i]))
    print({key: round(float(np.mean(v)), 3) for key, v in k.items()})
    assert k[("neutral", 1)] == [0.0] * len(k[("neutral", 1)])
    for emotion in ("happy", "sad"):
        assert np.mean(k[(emotion, 3)]) == pytest.approx(1.0, abs=1e-5)  # the store's pseudo intensity is not 1 here
        assert np.mean(truth[(emotion, 3)]) < 0.9
        # level 1 sits where the world's true intensity puts it, relative to level 3
        expected = np.mean(truth[(emotion, 1)]) / np.mean(truth[(emotion, 3)])
        assert np.mean(k[(emotion, 1)]) == pytest.approx(expected, abs=0.05)
    # the same k drives the interpolation at sampling time: e_n + k·(e_y − e_n) reads back as k
    neutral, targets = strongest_level_expressions(store)
    ks = np.linspace(0, 1, 5)
    for emotion, target in targets.items():
        path = interpolate_expression(neutral, target, ks)
        np.testing.assert_allclose(dataset.intensity_measure.read(path, emotion), ks, atol=1e-9)
