"""Audio-to-intensity predictor (papers/framewise_emotion_intensity.txt §3.1, supplementary 6.1.1).

A VAE over the per-frame intensity sequence L (T,) conditioned on frame-aligned audio features a
(T, F). Encoder: conv → ReLU → LayerNorm → non-causal WaveNet → (μ, log σ) of z. Decoder: non-causal
WaveNet → transposed conv → ReLU → LayerNorm → L̂ ∈ [0, 1]. Prior p(z|a): a normalising flow of
mean-only affine coupling layers (1D-conv WaveNets) and channel flips over a standard normal, as in
the flow-prior VAE the paper follows. All three are conditioned on the audio. Training minimises
the Monte-Carlo ELBO of eq. 1: −log p(L|z,a) + log q(z|L,a) − log p(z|a) with z ~ q.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn as nn
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config

from emodiff.models.weights import load_component

_LOG_2PI = math.log(2 * math.pi)


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channels of a (B, C, T) tensor."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = nn.LayerNorm(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.transpose(1, 2)).transpose(1, 2)


class WaveNet(nn.Module):
    """Non-causal WaveNet: dilated convs (centred padding) with gated tanh ⊙ σ units conditioned on
    per-frame features, residual and skip connections; returns the sum of the skips (B, C, T)."""

    def __init__(self, channels: int, cond_channels: int, n_layers: int, kernel_size: int = 5,
                 dilation_rate: int = 2):
        super().__init__()
        self.channels = channels
        self.cond = nn.Conv1d(cond_channels, 2 * channels * n_layers, 1)
        self.dilated = nn.ModuleList(
            nn.Conv1d(channels, 2 * channels, kernel_size, dilation=dilation_rate ** i,
                      padding=(kernel_size - 1) * dilation_rate ** i // 2)
            for i in range(n_layers))
        self.res_skip = nn.ModuleList(
            nn.Conv1d(channels, 2 * channels if i < n_layers - 1 else channels, 1) for i in range(n_layers))

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        c = self.channels
        gates = self.cond(cond).chunk(len(self.dilated), dim=1)
        skip = 0.0
        for i, (dilated, res_skip) in enumerate(zip(self.dilated, self.res_skip)):
            a = dilated(x) + gates[i]
            out = res_skip(torch.tanh(a[:, :c]) * torch.sigmoid(a[:, c:]))
            if i < len(self.dilated) - 1:
                x = x + out[:, :c]
                skip = skip + out[:, c:]
            else:
                skip = skip + out
        return skip


class MeanCoupling(nn.Module):
    """Mean-only affine coupling: z₂ ← z₂ + m(z₁, a) (volume preserving, log-det 0)."""

    def __init__(self, latent_channels: int, hidden: int, cond_channels: int, n_layers: int, kernel_size: int):
        super().__init__()
        self.half = latent_channels // 2
        self.pre = nn.Conv1d(self.half, hidden, 1)
        self.net = WaveNet(hidden, cond_channels, n_layers, kernel_size)
        self.post = nn.Conv1d(hidden, latent_channels - self.half, 1)
        nn.init.zeros_(self.post.weight)
        nn.init.zeros_(self.post.bias)

    def forward(self, z: torch.Tensor, cond: torch.Tensor, reverse: bool = False) -> torch.Tensor:
        z1, z2 = z[:, :self.half], z[:, self.half:]
        shift = self.post(self.net(self.pre(z1), cond))
        return torch.cat([z1, z2 - shift if reverse else z2 + shift], dim=1)


class IntensityVAE(ModelMixin, ConfigMixin):
    """VAE with a flow prior predicting per-frame emotion intensity from audio features (eq. 1)."""

    @register_to_config
    def __init__(self, audio_dim: int = 320, hidden: int = 64, latent_channels: int = 4, n_layers: int = 4,
                 kernel_size: int = 5, n_flows: int = 4, flow_layers: int = 2, recon_sigma: float = 0.1):
        super().__init__()
        if latent_channels < 2:
            raise ValueError("the coupling prior needs at least 2 latent channels")
        self.audio = nn.Sequential(nn.Conv1d(audio_dim, hidden, 3, padding=1), nn.ReLU(), ChannelLayerNorm(hidden))
        self.enc_in = nn.Sequential(nn.Conv1d(1, hidden, 3, padding=1), nn.ReLU(), ChannelLayerNorm(hidden))
        self.enc_net = WaveNet(hidden, hidden, n_layers, kernel_size)
        self.enc_out = nn.Conv1d(hidden, 2 * latent_channels, 1)
        self.dec_in = nn.Conv1d(latent_channels, hidden, 1)
        self.dec_net = WaveNet(hidden, hidden, n_layers, kernel_size)
        self.dec_up = nn.Sequential(nn.ConvTranspose1d(hidden, hidden, 3, padding=1), nn.ReLU(),
                                    ChannelLayerNorm(hidden))
        self.dec_out = nn.Conv1d(hidden, 1, 1)
        self.flows = nn.ModuleList(
            MeanCoupling(latent_channels, hidden, hidden, flow_layers, kernel_size) for _ in range(n_flows))

    def _prior_to_base(self, z: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """f(z): through each coupling then a channel flip; p(z|a) = N(f(z); 0, I) since log|det| = 0."""
        for flow in self.flows:
            z = flow(z, cond).flip(1)
        return z

    def _base_to_prior(self, u: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        for flow in reversed(self.flows):
            u = flow(u.flip(1), cond, reverse=True)
        return u

    def _decode(self, z: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h = self.dec_up(self.dec_net(self.dec_in(z), cond))
        return torch.sigmoid(self.dec_out(h))[:, 0]

    def forward(self, intensity: torch.Tensor, audio: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-frame Monte-Carlo ELBO terms (eq. 1) for intensity (B, T) and audio (B, T, F):
        `recon` = −log p(L|z,a), `kl` = log q(z|L,a) − log p(z|a) (one sample z), and `prediction`."""
        cond = self.audio(audio.transpose(1, 2))
        h = self.enc_net(self.enc_in(intensity[:, None]), cond)
        mean, log_std = self.enc_out(h).chunk(2, dim=1)
        log_std = log_std.clamp(-7.0, 3.0)
        eps = torch.randn_like(mean)
        z = mean + eps * log_std.exp()
        log_q = (-0.5 * eps ** 2 - log_std - 0.5 * _LOG_2PI).sum(1)
        u = self._prior_to_base(z, cond)
        log_p = (-0.5 * u ** 2 - 0.5 * _LOG_2PI).sum(1)
        prediction = self._decode(z, cond)
        sigma = self.config.recon_sigma
        recon = 0.5 * ((intensity - prediction) / sigma) ** 2 + math.log(sigma) + 0.5 * _LOG_2PI
        return {"recon": recon.mean(), "kl": (log_q - log_p).mean(), "prediction": prediction}

    @torch.no_grad()
    def predict(self, audio: torch.Tensor, temperature: float = 0.0,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """Intensity (B, T) for audio (B, T, F): z = f⁻¹(temperature·ε) from the prior, decoded.
        Temperature 0 decodes the prior's mode image f⁻¹(0) and is deterministic."""
        audio = audio.to(self.device, self.dtype)
        cond = self.audio(audio.transpose(1, 2))
        shape = (audio.shape[0], self.config.latent_channels, audio.shape[1])
        u = torch.randn(shape, generator=generator).to(cond) * temperature if temperature > 0 else cond.new_zeros(shape)
        return self._decode(self._base_to_prior(u, cond), cond)


def load_intensity_vae(path: str | Path) -> IntensityVAE:
    """A trained predictor from a `save_pretrained` folder, with a clear error when it is missing."""
    return load_component(path, IntensityVAE, f"No trained intensity predictor in {path} (config.json missing); "
                          "train one with `emodiff train intensity`.")
