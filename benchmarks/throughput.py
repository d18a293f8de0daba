"""What bench_sample.py and bench_train.py share to put a measured rate against the device's compute limit:
FLOPs counted by torch's FlopCounterMode, the device's dense bf16 peak (given, or looked up for the data-centre
GPUs below), CUDA synchronisation and the CUDA allocator's peak."""

from __future__ import annotations

from typing import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

# dense (no sparsity) bf16 tensor-core TFLOP/s from NVIDIA's data sheets; the first name found in the device name wins
PEAK_BF16_TFLOPS = (("H100 PCIe", 756.0), ("H100", 989.4), ("H200", 989.4), ("A100", 312.0))


def peak_tflops(device: torch.device, given: float | None) -> float | None:
    """`given`, else the looked-up dense bf16 peak of a known CUDA device, else None (a CPU has no default)."""
    if given is not None or device.type != "cuda":
        return given
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16_TFLOPS if key in name), None)


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else device.type


def _cpu_attention_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query, key, value)


def _cpu_attention_backward_flops(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out, query, key, value)


# torch counts the CUDA attention kernels but not the CPU one, which would leave attention out of a CPU count
CPU_ATTENTION_FLOPS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention_flops,
                       torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_attention_backward_flops}


def count_flops(run: Callable[[], object]) -> int:
    """FLOPs of `run()` (a multiply-add counts 2; convolutions, matmuls, attention, and their backward if run)."""
    with FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS) as counter:
        run()
    return counter.get_total_flops()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> str:
    """The CUDA allocator's peak since the last reset, or n/a (a CPU process's peak RSS only grows)."""
    return f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB" if device.type == "cuda" else "n/a"


def share_of_peak(flops_per_second: float, peak: float | None) -> str:
    return "n/a" if peak is None else f"{flops_per_second / (peak * 1e12):.1%}"
