"""This process's memory: what it holds now and at its peak (and on CUDA the peak torch allocation)."""

import resource
import sys

import psutil
import torch


def memory_use(device: torch.device | None = None) -> dict[str, int]:
    """Resident set size now and the process's peak so far, in bytes; with a CUDA `device` also
    `gpu_peak`, the most torch allocated on it since `reset_gpu_peak`."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    use = {"rss": psutil.Process().memory_info().rss, "peak": peak if sys.platform == "darwin" else peak * 1024}
    if device is not None and device.type == "cuda":
        use["gpu_peak"] = torch.cuda.max_memory_allocated(device)
    return use


def reset_gpu_peak(device: torch.device) -> None:
    """Start a new peak of torch's allocations on a CUDA `device` (no-op elsewhere)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
