"""The report of `emodiff doctor`: library versions, the compute device, optional backends and weight files.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
from pathlib import Path

LIBRARIES = ("torch", "diffusers", "accelerate", "transformers", "av", "mediapipe", "numpy")
# optional backend: (import name, distribution name, what it is for)
OPTIONAL_BACKENDS = {
    "face-alignment": ("face_alignment", "face-alignment", "FAN landmarks (prepare --landmarks fan)"),
    "xformers": ("xformers", "xformers", "memory-efficient attention (denoiser config)"),
    "pytorch3d": ("pytorch3d", "pytorch3d", "FLAME mesh rendering"),
    "basicsr": ("basicsr", "basicsr", "not needed: emodiff reads basicsr checkpoints itself"),
}
# weight file flag: (environment variable, where to get it)
WEIGHT_FILES = {
    "deca_model": ("EMODIFF_DECA_MODEL", "deca_model.tar from https://github.com/yfeng95/DECA (registration)"),
    "flame_model": ("EMODIFF_FLAME_MODEL", "generic_model.pkl from https://flame.is.tue.mpg.de (registration)"),
    "audio_model": ("EMODIFF_AUDIO_MODEL", "a local save of facebook/hubert-large-ls960-ft or a wav2vec2 model"),
    "sr_weights": ("EMODIFF_SR_WEIGHTS", "RealESRGAN_x4plus.pth from https://github.com/xinntao/Real-ESRGAN/releases"),
}


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def device_report() -> str:
    """The accelerator torch would use: CUDA (with GPU names), Apple MPS, or CPU."""
    import torch

    if torch.cuda.is_available():
        names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        return f"cuda {torch.version.cuda} ({names})"
    if torch.backends.mps.is_available():
        return "mps (Apple GPU)"
    return f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"


def report(weights: dict[str, str | None]) -> list[str]:
    """The doctor's lines; `weights` maps each WEIGHT_FILES name to a path or None (then its env var)."""
    lines = [f"python        {platform.python_version()} ({platform.platform()})"]
    lines += [f"{lib:<13} {_version(lib) or 'NOT INSTALLED'}" for lib in LIBRARIES]
    lines.append(f"device        {device_report()}")
    lines.append("optional backends:")
    for name, (module, distribution, purpose) in OPTIONAL_BACKENDS.items():
        found = importlib.util.find_spec(module) is not None
        state = f"available {_version(distribution) or ''}".rstrip() if found else "not installed"
        lines.append(f"  {name:<15} {state:<20} {purpose}")
    lines.append("weight files:")
    for name, (env, source) in WEIGHT_FILES.items():
        path = weights.get(name) or os.environ.get(env)
        if not path:
            state = f"not set (--{name.replace('_', '-')} or ${env}; get {source})"
        elif Path(path).exists():
            state = f"found {path}"
        else:
            state = f"MISSING {path} (get {source})"
        lines.append(f"  {name:<15} {state}")
    return lines
