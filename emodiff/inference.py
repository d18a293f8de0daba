"""GPU-ready inference settings of `EmoDiffPipeline`: autocast precision, channels_last, torch.compile, attention.

None of them changes what is computed, only how: bf16/fp16 autocast runs convolutions and matmuls in 16 bits
(torch.autocast; normalisations and the scheduler stay in fp32), channels_last stores the 4-D weights NHWC (the
layout of tensor-core convolutions), `compile` traces the denoiser with torch.compile (inductor; on CUDA in
"reduce-overhead" mode, which replays each fixed-shape step as a CUDA graph), and the attention backend is
PyTorch SDPA or xformers' memory-efficient attention.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from emodiff.errors import EmodiffError
from emodiff.models.unet import Attention, check_attention_backend

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class InferenceOptions:
    """How the pipeline runs its networks; the defaults are plain fp32 eager PyTorch (the flags of `emodiff sample` and
    `emodiff demo`: `emodiff.cli.sample.add_inference_arguments`)."""

    precision: str = "fp32"
    channels_last: bool = False
    compile: bool = False
    attention: str | None = None  # None: the backend each model was configured with


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """torch.autocast for `precision` on `device` (nothing for fp32); fp16 on a CPU is one sentence."""
    if precision not in PRECISIONS:
        raise EmodiffError(f"Unknown precision {precision!r}; choose one of: {', '.join(PRECISIONS)}.")
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "fp16" and device.type != "cuda":
        raise EmodiffError(f"fp16 precision needs a CUDA device (this one is {device.type}, where fp16 has no fast "
                           "kernels and autocast would only emulate it); use --precision bf16 or fp32.")
    return torch.autocast(device.type, dtype=PRECISIONS[precision])


def set_attention_backend(module: torch.nn.Module, backend: str) -> None:
    """Switch every attention layer of `module` to `backend` (same weights, same result up to rounding)."""
    check_attention_backend(backend)
    for layer in module.modules():
        if isinstance(layer, Attention):
            layer.backend = backend


def prepare_modules(denoiser: torch.nn.Module, others: list[torch.nn.Module], device: torch.device,
                    options: InferenceOptions) -> None:
    """Apply `options` in place: the attention backend and channels_last to every module, torch.compile to the
    denoiser (the network called steps × rows times per frame; the others run once per video or per frame)."""
    autocast(device, options.precision)  # refuse a precision the device cannot run before anything changes
    for module in [denoiser, *others]:
        if options.attention is not None:
            set_attention_backend(module, options.attention)
        if options.channels_last:
            module.to(memory_format=torch.channels_last)
    if options.compile:
        denoiser.compile(mode="reduce-overhead" if device.type == "cuda" else None, dynamic=False)
