"""This process's memory: what it holds now and at its peak, and handing freed heap back to the system."""

import resource
import sys
import threading
import time

import psutil
import torch
from nvflare.fuel.utils.memory_utils import cleanup_memory, get_allocator_type, try_malloc_trim


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


def release_free_heap() -> None:
    """Collect garbage, then return glibc's freed heap pages to the system (NVFlare's
    `cleanup_memory`; no-op off glibc).

    NVFlare's transfer threads and torch allocate many mid-size buffers from several malloc arenas;
    glibc keeps their freed pages, so a long-running server's RSS creeps up round after round although
    nothing is held. `malloc_trim(0)` after each round gives them back.
    """
    cleanup_memory()  # gc first: model sets caught in reference cycles (NVFlare contexts, tracebacks)


def keep_heap_trimmed(interval_s: float = 1.0) -> None:
    """Return glibc's freed heap pages to the system every `interval_s` seconds, from one daemon
    thread per process (later calls do nothing); no-op under another allocator.

    Moving a round's arrays, NVFlare allocates and frees buffers of up to tens of MiB from its
    transfer threads. glibc keeps such freed pages in its arenas, so a process's RSS grew by most of
    the bytes it had just sent or received, although it no longer held them. See docs/performance.md.
    """
    global _trimmer
    with _trimmer_lock:
        if _trimmer is not None or get_allocator_type() != "glibc":
            return
        _trimmer = threading.Thread(target=_trim_every, args=(interval_s,), name="fedsm-heap-trim", daemon=True)
        _trimmer.start()


_trimmer: threading.Thread | None = None
_trimmer_lock = threading.Lock()


def _trim_every(interval_s: float) -> None:
    while True:
        time.sleep(interval_s)
        try_malloc_trim()
