"""The denoising UNet of EMOdiffhead (paper §3.2.2, eq. 11–13), in the style of ADM (guided-diffusion).

Input  x_t ⊕ x_id ⊕ x^(i−2) ⊕ x^(i−1)  (eq. 11, 12 channels); output ε ⊕ v (6 channels), v being the
learned-range variance interpolation of eq. 5. Conditional residual blocks apply the nested FiLM of
eq. 13 after GroupNorm; identity features from the ReferenceNet enter through `ReferenceAttention`
(cross-attention to the ReferenceNet map of the same level, then spatial self-attention).
The building blocks here are shared with `emodiff.models.reference_net.ReferenceNet`.
"""

from __future__ import annotations

import importlib.util
from typing import Sequence

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from emodiff.errors import EmodiffError
from emodiff.models.conditioning import TimestepEncoder, WindowEncoder, build_expression_encoder

ATTENTION_BACKENDS = ("sdpa", "xformers")
PREDICTION_TYPES = ("epsilon", "v_prediction")


def zero_init(module: nn.Module) -> nn.Module:
    """Zero a layer's parameters, so the residual branch it closes starts as the identity (ADM)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def check_attention_backend(backend: str) -> None:
    """Refuse, in one sentence, an unknown backend or xformers when it is not installed."""
    if backend not in ATTENTION_BACKENDS:
        raise EmodiffError(f"unknown attention_backend {backend!r}; choose one of {', '.join(ATTENTION_BACKENDS)}")
    if backend == "xformers" and importlib.util.find_spec("xformers") is None:
        raise EmodiffError("The xformers attention backend needs the xformers package, which is not installed "
                           "(pip install emodiff[xformers]); use sdpa, PyTorch's fused attention.")


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str) -> torch.Tensor:
    """Scaled dot-product attention of (B, heads, L, d) tensors through PyTorch SDPA or xformers."""
    if backend == "xformers":
        import xformers.ops  # optional extra: pip install emodiff[xformers]

        out = xformers.ops.memory_efficient_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return out.transpose(1, 2)
    return F.scaled_dot_product_attention(q, k, v)


class NestedFiLM(nn.Module):
    """Eq. 13 on a normalised map: h ← e_s·(a_s·(t_s·h + t_b) + a_b) + e_b.

    One (scale, shift) pair per condition embedding, each from SiLU + Linear (the paper's MLP),
    applied innermost first in the order the embeddings are given (time, audio, expression).
    Scales are parametrised as 1 + γ and (γ, shift) start at zero, so a new block is the identity.
    """

    def __init__(self, channels: int, embedding_dims: Sequence[int]):
        super().__init__()
        self.projections = nn.ModuleList(
            nn.Sequential(nn.SiLU(), zero_init(nn.Linear(dim, 2 * channels))) for dim in embedding_dims
        )

    def forward(self, h: torch.Tensor, *embeddings: torch.Tensor) -> torch.Tensor:
        for projection, embedding in zip(self.projections, embeddings, strict=True):
            gamma, shift = projection(embedding)[:, :, None, None].chunk(2, dim=1)
            h = (1 + gamma) * h + shift
        return h


class ResBlock(nn.Module):
    """ADM residual block; given `embedding_dims` it is a conditional residual block (eq. 12–13)."""

    def __init__(self, in_channels: int, out_channels: int, groups: int, dropout: float = 0.0,
                 embedding_dims: Sequence[int] = ()):
        super().__init__()
        self.in_layers = nn.Sequential(nn.GroupNorm(groups, in_channels), nn.SiLU(),
                                       nn.Conv2d(in_channels, out_channels, 3, padding=1))
        self.out_norm = nn.GroupNorm(groups, out_channels)
        self.film = NestedFiLM(out_channels, embedding_dims) if embedding_dims else None
        self.out_layers = nn.Sequential(nn.SiLU(), nn.Dropout(dropout),
                                        zero_init(nn.Conv2d(out_channels, out_channels, 3, padding=1)))
        self.skip = nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor, *embeddings: torch.Tensor) -> torch.Tensor:
        h = self.out_norm(self.in_layers(x))
        if self.film is not None:
            h = self.film(h, *embeddings)
        return self.skip(x) + self.out_layers(h)


class Attention(nn.Module):
    """Multi-head attention of a feature map to itself (spatial) or to a context map (cross), residual."""

    def __init__(self, channels: int, heads: int, groups: int, backend: str = "sdpa", cross: bool = False):
        super().__init__()
        self.heads = heads
        self.backend = backend
        self.norm = nn.GroupNorm(groups, channels)
        self.context_norm = nn.GroupNorm(groups, channels) if cross else None
        self.to_q = nn.Linear(channels, channels)
        self.to_kv = nn.Linear(channels, 2 * channels)
        self.to_out = zero_init(nn.Linear(channels, channels))

    def _tokens(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(2).transpose(1, 2)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.heads, -1)).transpose(1, 2)

    def forward(self, h: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        b, c, height, width = h.shape
        x = self._tokens(self.norm(h))
        ctx = x if self.context_norm is None else self._tokens(self.context_norm(context))
        k, v = self.to_kv(ctx).chunk(2, dim=-1)
        out = attention(self._split_heads(self.to_q(x)), self._split_heads(k), self._split_heads(v), self.backend)
        out = self.to_out(out.transpose(1, 2).flatten(2))
        return h + out.transpose(1, 2).reshape(b, c, height, width)


class ReferenceAttention(nn.Module):
    """Identity injection (§3.2.2, ReferenceNet): cross-attention from the backbone map to the
    ReferenceNet map of the same level, followed by spatial self-attention."""

    def __init__(self, channels: int, heads: int, groups: int, backend: str = "sdpa"):
        super().__init__()
        self.cross = Attention(channels, heads, groups, backend, cross=True)
        self.spatial = Attention(channels, heads, groups, backend)

    def forward(self, h: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        return self.spatial(self.cross(h, reference))


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class UNetTrunk(nn.Module):
    """The ADM trunk shared by the denoiser and the ReferenceNet: input conv, down path, middle,
    up path with skip connections; attention sites at the levels in `reference_levels`.

    conditional=True (denoiser): residual blocks carry `NestedFiLM` over `embedding_dims` and each
    site is a `ReferenceAttention` reading the matching entry of `reference_features`.
    conditional=False (ReferenceNet): plain residual blocks, each site is spatial self-attention
    and its outputs are returned as the reference features; blocks after the last site are
    never used and are not built.
    """

    def __init__(self, in_channels: int, base_channels: int, channel_mult: Sequence[int], num_res_blocks: int,
                 reference_levels: Sequence[int], num_heads: int, groups: int, dropout: float = 0.0,
                 attention_backend: str = "sdpa", embedding_dims: Sequence[int] = ()):
        super().__init__()
        check_attention_backend(attention_backend)
        bad = [lv for lv in reference_levels if not 0 <= lv < len(channel_mult)]
        if bad:
            raise EmodiffError(f"reference_levels must name levels 0..{len(channel_mult) - 1}, got {list(reference_levels)}")
        self.conditional = bool(embedding_dims)
        self.gradient_checkpointing = False

        def res(cin: int, cout: int) -> ResBlock:
            return ResBlock(cin, cout, groups, dropout, embedding_dims)

        def site(ch: int) -> nn.Module:
            if self.conditional:
                return ReferenceAttention(ch, num_heads, groups, attention_backend)
            return Attention(ch, num_heads, groups, attention_backend)

        ch = base_channels
        self.input_conv = nn.Conv2d(in_channels, ch, 3, padding=1)
        skips = [ch]
        self.down = nn.ModuleList()
        last = len(channel_mult) - 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                blocks = [res(ch, base_channels * mult)]
                ch = base_channels * mult
                if level in reference_levels:
                    blocks.append(site(ch))
                self.down.append(nn.ModuleList(blocks))
                skips.append(ch)
            if level != last:
                self.down.append(nn.ModuleList([Downsample(ch)]))
                skips.append(ch)
        middle = [res(ch, ch)] + ([site(ch)] if last in reference_levels else []) + [res(ch, ch)]
        self.middle = nn.ModuleList(middle)
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                blocks = [res(ch + skips.pop(), base_channels * mult)]
                ch = base_channels * mult
                if level in reference_levels:
                    blocks.append(site(ch))
                if level and i == num_res_blocks:
                    blocks.append(Upsample(ch))
                self.up.append(nn.ModuleList(blocks))
        self.out_channels = ch
        if not self.conditional:
            self._drop_after_last_site()

    def _drop_after_last_site(self) -> None:
        while self.up and not any(isinstance(b, Attention) for b in self.up[-1]):
            del self.up[-1]
        if self.up:
            while not isinstance(self.up[-1][-1], Attention):
                del self.up[-1][-1]

    def _call(self, block: nn.Module, *args: torch.Tensor) -> torch.Tensor:
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return self._gradient_checkpointing_func(block, *args)
        return block(*args)

    def forward(self, x: torch.Tensor, embeddings: Sequence[torch.Tensor] = (),
                reference_features: Sequence[torch.Tensor] | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Returns the last map and, for the ReferenceNet, the outputs of its attention sites."""
        site_outputs: list[torch.Tensor] = []

        def apply(block: nn.Module, h: torch.Tensor) -> torch.Tensor:
            if isinstance(block, ResBlock):
                return self._call(block, h, *embeddings)
            if isinstance(block, ReferenceAttention):
                h = self._call(block, h, reference_features[len(site_outputs)])
            elif isinstance(block, Attention):
                h = self._call(block, h)
            else:
                return block(h)
            site_outputs.append(h)
            return h

        h = self.input_conv(x)
        skips = [h]
        for blocks in self.down:
            for block in blocks:
                h = apply(block, h)
            skips.append(h)
        for block in self.middle:
            h = apply(block, h)
        for blocks in self.up:
            h = torch.cat([h, skips.pop()], dim=1)
            for block in blocks:
                h = apply(block, h)
        if self.conditional and len(site_outputs) != len(reference_features):
            raise ValueError(f"got {len(reference_features)} reference feature maps for {len(site_outputs)} attention sites")
        return h, ([] if self.conditional else site_outputs)


class DenoisingUNet(ModelMixin, ConfigMixin):
    """ε ⊕ v prediction for one frame (eq. 4–5, 11–13), conditioned on time, an audio window, an
    expression condition and ReferenceNet identity features.

    Audio and expression embeddings are replaced by learned null embeddings where `audio_keep` /
    `expression_keep` is False (classifier-free guidance, docs/design.md §5.1). With `motion_noise_conditioning`
    the motion frames may arrive noised to a level s (a diffusion timestep, `GaussianDiffusion.q_sample`) and
    s is embedded like t and added to t's embedding: the conditioning augmentation of cascaded diffusion
    models (Ho et al. 2021, §3.2), which keeps the grain of generated motion frames from accumulating.

    A distilled student (`emodiff train distill`) has the same layers but predicts v = α_t·ε − σ_t·x_0
    (`prediction_type="v_prediction"`, Salimans & Ho 2022) in its first three channels, and `guidance_scales`
    (s_audio, s_expression) records the classifier-free guidance baked into it: it is sampled with one
    conditional forward per step.

    With `motion_mouth_box` (x0, y0, x1, y1 as fractions of the crop side) the motion frames reach the trunk with
    that box set to 0 (beyond the paper, for real video): emodiff's crops are centred on the nose tip
    (docs/design.md §4.3), so the box holds the lips and chin of every frame, and the denoiser must take the mouth
    from the audio window instead of copying the previous frame's.
    """

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        sample_size: int = 128,
        base_channels: int = 128,
        channel_mult: Sequence[int] = (1, 2, 3),
        num_res_blocks: int = 2,
        reference_levels: Sequence[int] = (1, 2),
        num_heads: int = 4,
        groups: int = 32,
        dropout: float = 0.0,
        embedding_dim: int = 512,
        audio_dim: int = 320,
        expression_dim: int = 50,
        window: int = 2,
        expression_encoder: str = "interpolation",
        num_emotions: int = 8,
        attention_backend: str = "sdpa",
        motion_noise_conditioning: bool = False,
        prediction_type: str = "epsilon",
        guidance_scales: Sequence[float] | None = None,
        motion_mouth_box: Sequence[float] | None = None,
    ):
        super().__init__()
        if prediction_type not in PREDICTION_TYPES:
            raise EmodiffError(f"Unknown prediction_type {prediction_type!r}; choose one of {', '.join(PREDICTION_TYPES)}.")
        if motion_mouth_box is not None:
            x0, y0, x1, y1 = (float(v) for v in motion_mouth_box)
            if not (0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1):
                raise EmodiffError(f"motion_mouth_box must be x0, y0, x1, y1 with 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1, "
                                   f"not {list(motion_mouth_box)}.")
        self.time_embedding = TimestepEncoder(base_channels, embedding_dim)
        self.motion_noise_embedding = TimestepEncoder(base_channels, embedding_dim) if motion_noise_conditioning else None
        self.audio_embedding = WindowEncoder(audio_dim, window, embedding_dim)
        self.expression_embedding = build_expression_encoder(expression_encoder, expression_dim, window,
                                                           embedding_dim, num_emotions)
        self.audio_null = nn.Parameter(torch.randn(embedding_dim) * 0.02)
        self.expression_null = nn.Parameter(torch.randn(embedding_dim) * 0.02)
        self.trunk = UNetTrunk(12, base_channels, channel_mult, num_res_blocks, reference_levels, num_heads,
                               groups, dropout, attention_backend, embedding_dims=(embedding_dim,) * 3)
        self.out = nn.Sequential(nn.GroupNorm(groups, self.trunk.out_channels), nn.SiLU(),
                                 zero_init(nn.Conv2d(self.trunk.out_channels, 6, 3, padding=1)))

    def blank_motion_mouth(self, motion: torch.Tensor) -> torch.Tensor:
        """The motion frames (B,6,H,W) with the `motion_mouth_box` set to 0 (unchanged without a box)."""
        box = self.config.get("motion_mouth_box")
        if box is None:
            return motion
        height, width = motion.shape[-2:]
        x0, x1 = round(box[0] * width), round(box[2] * width)
        y0, y1 = round(box[1] * height), round(box[3] * height)
        keep = torch.ones_like(motion[:1, :1])
        keep[..., y0:y1, x0:x1] = 0
        return motion * keep

    @staticmethod
    def _keep(embedding: torch.Tensor, null: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        if keep is None:
            return embedding
        return torch.where(keep[:, None], embedding, null.to(embedding.dtype))

    def forward(
        self,
        x_t: torch.Tensor,
        timesteps: torch.Tensor,
        identity: torch.Tensor,
        motion: torch.Tensor,
        audio: torch.Tensor,
        expression: torch.Tensor,
        reference_features: Sequence[torch.Tensor],
        emotion: torch.Tensor | None = None,
        intensity: torch.Tensor | None = None,
        audio_keep: torch.Tensor | None = None,
        expression_keep: torch.Tensor | None = None,
        motion_noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x_t (B,3,H,W), timesteps (B,) or scalar, identity (B,3,H,W), motion (B,6,H,W),
        audio (B,2n+1,F), expression (B,2n+1,D) → ε ⊕ v (B,6,H,W). `motion_noise` (B,) or scalar is the
        noise level of the motion frames (0, clean, when not given; used with motion_noise_conditioning)."""
        timesteps = torch.as_tensor(timesteps, device=x_t.device).expand(x_t.shape[0])
        time = self.time_embedding(timesteps)
        if self.motion_noise_embedding is not None:
            level = torch.as_tensor(0 if motion_noise is None else motion_noise, device=x_t.device).expand(x_t.shape[0])
            time = time + self.motion_noise_embedding(level)
        embeddings = (
            time,
            self._keep(self.audio_embedding(audio), self.audio_null, audio_keep),
            self._keep(self.expression_embedding(expression, emotion, intensity), self.expression_null, expression_keep),
        )
        motion = self.blank_motion_mouth(motion)
        h, _ = self.trunk(torch.cat([x_t, identity, motion], dim=1), embeddings, reference_features)
        return self.out(h)
