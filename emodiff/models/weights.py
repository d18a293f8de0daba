"""Reading third-party weights safely and placing modules: the helpers every model loader shares."""

from __future__ import annotations

from pathlib import Path

import torch

from emodiff.errors import EmodiffError


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A tensor dict from a local `.safetensors` file or a `.pt/.pth` file read with `weights_only=True`."""
    path = Path(path)
    if not path.is_file():
        raise EmodiffError(f"Weights file {path} does not exist.")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unreadable or not a plain tensor dict
        raise EmodiffError(f"Cannot read weights from {path}: {err}.") from err
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise EmodiffError(f"{path} does not hold a state dict of tensors.")
    return state


def module_device(module: torch.nn.Module) -> torch.device:
    """Device of a module's first parameter or buffer (CPU for a module without any)."""
    for tensor in (*module.parameters(), *module.buffers()):
        return tensor.device
    return torch.device("cpu")
