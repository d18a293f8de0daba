"""Loading saved components, reading third-party weights safely and placing modules: the helpers every model loader
shares."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import torch
from diffusers.models.modeling_utils import ModelMixin

from emodiff.errors import EmodiffError

Model = TypeVar("Model", bound=ModelMixin)


def load_component(folder: str | Path, model_cls: type[Model], missing: str) -> Model:
    """`model_cls` from a `save_pretrained` folder (config.json + safetensors) in eval mode. A folder without
    config.json raises `EmodiffError` with `missing`, the sentence that says what was expected and how to make it;
    a broken one says why it cannot be read."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise EmodiffError(missing)
    try:
        return model_cls.from_pretrained(folder).eval()
    except (OSError, ValueError, KeyError, RuntimeError, TypeError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise EmodiffError(f"Cannot load {folder}: {reason}") from err


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
