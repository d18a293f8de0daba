"""ReferenceNet (paper §3.2.2): identity features for the denoiser's `ReferenceAttention` sites.

The same UNet trunk as the denoiser without conditional residual blocks (no time, audio or
expression), fed the identity frame. It does not depend on the timestep, so its features are
computed once per identity and reused for every denoising step and every frame.

A denoiser with no attention sites (`reference_levels: []`) is the paper's "w/o ReferenceNet" ablation
(Table 2): the identity frame enters only through the input concatenation of eq. 11, and its ReferenceNet
has no layers and returns no features.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin

from emodiff.models.unet import DenoisingUNet, UNetTrunk

TRUNK_KEYS = ("base_channels", "channel_mult", "num_res_blocks", "reference_levels", "num_heads", "groups",
              "attention_backend")


class ReferenceNet(ModelMixin, ConfigMixin):
    """identity (B,3,H,W) → one feature map per attention site of a `DenoisingUNet` with the same trunk.

    `trunk_config` holds the `TRUNK_KEYS` entries of that UNet's config (see `matching`).
    """

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(self, trunk_config: dict[str, Any]):
        super().__init__()
        self.trunk = UNetTrunk(3, **trunk_config) if trunk_config["reference_levels"] else None
        if self.trunk is None:  # diffusers writes and reads only models with a state: an empty one
            self.register_buffer("no_sites", torch.zeros(0))

    @classmethod
    def matching(cls, unet: DenoisingUNet) -> "ReferenceNet":
        """A new ReferenceNet whose trunk (and so whose feature maps) matches `unet`'s."""
        return cls(trunk_config={key: unet.config[key] for key in TRUNK_KEYS})

    def forward(self, identity: torch.Tensor) -> list[torch.Tensor]:
        return [] if self.trunk is None else self.trunk(identity)[1]
