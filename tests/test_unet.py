"""Denoising UNet and ReferenceNet: eq. 13 nesting, the reference path, CFG nulls, save/load."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from emodiff.errors import EmodiffError
from emodiff.models import conditioning
from emodiff.models.reference_net import ReferenceNet
from emodiff.models.unet import DenoisingUNet, NestedFiLM

TINY = dict(sample_size=16, base_channels=16, channel_mult=(1, 2, 2), num_res_blocks=1, reference_levels=(1, 2),
            num_heads=2, groups=8, embedding_dim=32, audio_dim=12, expression_dim=6, window=2)


def randomized(model: nn.Module, seed: int = 0) -> nn.Module:
    """Overwrite all parameters (including the zero-initialised ones) with small random values."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    return model


def make_models(seed: int = 0, **overrides) -> tuple[DenoisingUNet, ReferenceNet]:
    torch.manual_seed(seed)
    unet = randomized(DenoisingUNet(**{**TINY, **overrides}), seed).eval()
    return unet, randomized(ReferenceNet.matching(unet), seed + 1).eval()


def make_inputs(batch: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "x_t": torch.randn(batch, 3, 16, 16, generator=g),
        "timesteps": torch.randint(0, 1000, (batch,), generator=g),
        "identity": torch.randn(batch, 3, 16, 16, generator=g),
        "motion": torch.randn(batch, 6, 16, 16, generator=g),
        "audio": torch.randn(batch, 5, 12, generator=g),
        "expression": torch.randn(batch, 5, 6, generator=g),
    }


def test_nested_film_follows_eq13_order():
    film = NestedFiLM(channels=1, embedding_dims=(1, 1, 1))
    pairs = {"t": (0.5, 0.3), "a": (-0.4, 1.2), "e": (2.0, -0.7)}  # (γ, shift): scale = 1 + γ
    with torch.no_grad():
        for proj, (gamma, shift) in zip(film.projections, pairs.values()):
            proj[1].weight.zero_()
            proj[1].bias.copy_(torch.tensor([gamma, shift]))
    h = torch.linspace(-2, 2, 9).reshape(1, 1, 3, 3)
    emb = torch.ones(1, 1)
    out = film(h, emb, emb, emb)

    def nested(order: str) -> torch.Tensor:
        x = h
        for name in order:  # innermost first
            gamma, shift = pairs[name]
            x = (1 + gamma) * x + shift
        return x

    (ts, tb), (as_, ab), (es, eb) = [(1 + g, b) for g, b in pairs.values()]
    formula = es * (as_ * (ts * h + tb) + ab) + eb  # eq. 13
    torch.testing.assert_close(out, formula)
    for order in itertools.permutations("tae"):
        if order != ("t", "a", "e"):
            assert (nested(order) - out).abs().max() > 0.1, order


def test_fresh_film_and_unet_are_identity_and_zero():
    film = NestedFiLM(channels=4, embedding_dims=(3, 3))
    h = torch.randn(2, 4, 5, 5)
    torch.testing.assert_close(film(h, torch.randn(2, 3), torch.randn(2, 3)), h)
    unet = DenoisingUNet(**TINY)
    ref = ReferenceNet.matching(unet)
    inputs = make_inputs()
    out = unet(**inputs, reference_features=ref(inputs["identity"]))
    assert out.shape == (2, 6, 16, 16) and out.abs().max() == 0  # zero-initialised output conv (ADM)


@torch.no_grad()
def test_reference_path_matters_and_features_can_be_cached():
    unet, ref = make_models()
    inputs = make_inputs()
    other = torch.randn_like(inputs["identity"])
    cached = ref(inputs["identity"])
    base = unet(**inputs, reference_features=cached)
    # Cached identity features give the same output as recomputing them (they do not depend on t).
    for t in (0, 500, 999):
        step = {**inputs, "timesteps": torch.full((2,), t)}
        torch.testing.assert_close(unet(**step, reference_features=cached),
                                   unet(**step, reference_features=ref(inputs["identity"])))
    # Changing only the image the ReferenceNet sees changes the prediction …
    only_reference = unet(**inputs, reference_features=ref(other))
    assert (only_reference - base).abs().mean() > 1e-3 * base.abs().mean()
    # … and so does changing the identity image everywhere.
    everywhere = unet(**{**inputs, "identity": other}, reference_features=ref(other))
    assert (everywhere - base).abs().mean() > 1e-3 * base.abs().mean()


@torch.no_grad()
def test_null_embeddings_remove_the_dropped_condition():
    unet, ref = make_models()
    inputs = make_inputs()
    feats = ref(inputs["identity"])
    drop = torch.tensor([False, True])
    new_audio = {**inputs, "audio": torch.randn_like(inputs["audio"])}
    a = unet(**inputs, reference_features=feats, audio_keep=drop)
    b = unet(**new_audio, reference_features=feats, audio_keep=drop)
    torch.testing.assert_close(a[0], b[0])          # audio dropped: its content is ignored
    assert (a[1] - b[1]).abs().max() > 1e-4          # audio kept: it matters
    new_expression = {**inputs, "expression": torch.randn_like(inputs["expression"])}
    a = unet(**inputs, reference_features=feats, expression_keep=drop)
    b = unet(**new_expression, reference_features=feats, expression_keep=drop)
    torch.testing.assert_close(a[0], b[0])
    assert (a[1] - b[1]).abs().max() > 1e-4


def test_expression_encoder_registry_receives_emotion_and_intensity(monkeypatch):
    seen = {}

    class Recording(conditioning.InterpolationExpressionEncoder):
        def forward(self, expression, emotion=None, intensity=None):
            seen.update(emotion=emotion, intensity=intensity)
            return super().forward(expression)

    monkeypatch.setitem(conditioning.EXPRESSION_ENCODERS, "recording", Recording)
    unet = DenoisingUNet(**{**TINY, "expression_encoder": "recording"})
    inputs = make_inputs()
    emotion, intensity = torch.tensor([3, 5]), torch.tensor([0.2, 0.9])
    unet(**inputs, reference_features=ReferenceNet.matching(unet)(inputs["identity"]), emotion=emotion,
         intensity=intensity)
    assert seen["emotion"] is emotion and seen["intensity"] is intensity
    with pytest.raises(EmodiffError, match="interpolation"):
        DenoisingUNet(**{**TINY, "expression_encoder": "nope"})


def test_window_encoders_standardise_with_their_saved_statistics(tmp_path):
    """The audio/expression encoders see (x − μ)/σ with the training data's statistics, and the statistics are
    part of the saved model, so sampling standardises exactly as training did."""
    unet, _ = make_models()
    g = torch.Generator().manual_seed(3)
    audio = make_inputs()["audio"]
    mean, std = torch.randn(audio.shape[-1], generator=g), torch.rand(audio.shape[-1], generator=g) + 0.5
    with torch.no_grad():
        plain = unet.audio_embedding((audio - mean) / std)
        unet.audio_embedding.set_statistics(mean, std)
        torch.testing.assert_close(unet.audio_embedding(audio), plain)
    unet.save_pretrained(tmp_path / "unet")
    loaded = DenoisingUNet.from_pretrained(tmp_path / "unet")
    torch.testing.assert_close(loaded.audio_embedding.feature_mean, mean)
    torch.testing.assert_close(loaded.audio_embedding.feature_std, std)


def test_save_pretrained_round_trip(tmp_path):
    unet, ref = make_models()
    unet.save_pretrained(tmp_path / "unet")
    ref.save_pretrained(tmp_path / "reference_net")
    assert (tmp_path / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    unet2 = DenoisingUNet.from_pretrained(tmp_path / "unet").eval()
    ref2 = ReferenceNet.from_pretrained(tmp_path / "reference_net").eval()
    inputs = make_inputs()
    with torch.no_grad():
        torch.testing.assert_close(unet2(**inputs, reference_features=ref2(inputs["identity"])),
                                   unet(**inputs, reference_features=ref(inputs["identity"])))


def test_gradient_checkpointing_same_gradients_and_every_parameter_trains():
    def grads(checkpointing: bool) -> dict[str, torch.Tensor]:
        unet, ref = make_models()
        unet.train(), ref.train()
        if checkpointing:
            unet.enable_gradient_checkpointing()
            ref.enable_gradient_checkpointing()
        inputs = make_inputs()
        keep = torch.tensor([True, False])  # one sample each with the condition and with its null
        unet(**inputs, reference_features=ref(inputs["identity"]), audio_keep=keep,
             expression_keep=keep).square().mean().backward()
        return {f"{tag}.{n}": p.grad for tag, m in (("u", unet), ("r", ref)) for n, p in m.named_parameters()}

    plain, checkpointed = grads(False), grads(True)
    # No parameter is unused (distributed training needs every one to get a gradient).
    assert all(g is not None and g.abs().sum() > 0 for g in plain.values())
    for name, g in plain.items():
        torch.testing.assert_close(checkpointed[name], g, msg=name)


def test_bad_trunk_config_is_one_clear_error():
    with pytest.raises(EmodiffError, match="reference_levels"):
        DenoisingUNet(**{**TINY, "reference_levels": (3,)})
    with pytest.raises(EmodiffError, match="attention_backend"):
        DenoisingUNet(**{**TINY, "attention_backend": "flash"})


def test_motion_mouth_box_hides_only_the_mouth_of_the_motion_frames(tmp_path):
    box = (0.25, 0.5, 0.75, 0.875)  # pixels 4..11 × 8..13 of a 16² frame
    unet, reference_net = make_models(motion_mouth_box=box)
    inputs = make_inputs(batch=1)
    motion = inputs.pop("motion").requires_grad_(True)
    unet(motion=motion, reference_features=reference_net(inputs["identity"]), **inputs).square().sum().backward()
    reach = motion.grad.abs().sum((0, 1))
    assert (reach[8:14, 4:12] == 0).all()  # what the previous frames' mouths show cannot reach the output
    assert (reach > 0).sum() == 16 * 16 - 6 * 8  # everything else does
    unet.save_pretrained(tmp_path)
    assert DenoisingUNet.from_pretrained(tmp_path).config.motion_mouth_box == list(box)
    for bad in ((0.5, 0.5, 0.25, 0.9), (0.2, 0.5, 0.8, 1.5)):
        with pytest.raises(EmodiffError, match="motion_mouth_box"):
            DenoisingUNet(**{**TINY, "motion_mouth_box": bad})
