"""Handing this process's freed heap back to the system, and the huge-page heap for a federation's processes."""

import gc
import os
import threading
import time
from collections.abc import Mapping

import psutil
from nvflare.fuel.utils.memory_utils import cleanup_memory, get_allocator_type, try_malloc_trim


def release_free_heap() -> None:
    """Collect garbage, then return glibc's freed heap pages to the system (NVFlare's
    `cleanup_memory`; no-op off glibc).

    NVFlare's transfer threads and torch allocate many mid-size buffers from several malloc arenas;
    glibc keeps their freed pages, so a long-running server's RSS creeps up round after round although
    nothing is held. `malloc_trim(0)` after each round gives them back.
    """
    cleanup_memory()  # gc first: model sets caught in reference cycles (NVFlare contexts, tracebacks)


HUGE_PAGE_TUNABLE = "glibc.malloc.hugetlb"


def huge_page_heap_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """A copy of `env` (default: this process's environment) whose `GLIBC_TUNABLES` also asks glibc's
    malloc to back its heap with transparent huge pages, for the processes of a federation.

    Each round every process receives and sends hundreds of MiB in fresh buffers; with 4 KiB pages
    the kernel faults and zeroes each page on first touch, which made up much of the communication
    time on CPU. Tunables are read at process start, so this goes into the environment of the
    command that starts the processes. glibc before 2.35 and other allocators ignore it.
    See docs/performance.md.
    """
    env = dict(os.environ if env is None else env)
    tunables = [t for t in env.get("GLIBC_TUNABLES", "").split(":") if t]
    if not any(t.partition("=")[0] == HUGE_PAGE_TUNABLE for t in tunables):
        tunables.append(f"{HUGE_PAGE_TUNABLE}=1")
    env["GLIBC_TUNABLES"] = ":".join(tunables)
    return env


def keep_heap_trimmed(interval_s: float = 1.0, cycle_growth_bytes: int = 256 * 2**20) -> None:
    """Return glibc's freed heap pages to the system every `interval_s` seconds, and collect reference
    cycles whenever RSS grew by `cycle_growth_bytes` since the last collection; one daemon thread per
    process (later calls do nothing); no-op under another allocator.

    Moving a round's arrays, NVFlare allocates and frees buffers of up to tens of MiB from its
    transfer threads. glibc keeps such freed pages in its arenas, and each streamed message stays in a
    reference cycle (NVFlare's `TxTask` and its `StreamFuture`) until Python's cyclic collector runs,
    which in a process of several hundred thousand objects is rare. Without this a process's RSS grew
    by most of the bytes it had just sent or received. See docs/performance.md.
    """
    global _trimmer
    with _trimmer_lock:
        if _trimmer is not None or get_allocator_type() != "glibc":
            return
        _trimmer = threading.Thread(target=_trim_every, args=(interval_s, cycle_growth_bytes),
                                    name="fedsm-heap-trim", daemon=True)
        _trimmer.start()


_trimmer: threading.Thread | None = None
_trimmer_lock = threading.Lock()


def _trim_every(interval_s: float, cycle_growth_bytes: int) -> None:
    process = psutil.Process()
    low = process.memory_info().rss  # RSS after the last collection, or lower since
    while True:
        time.sleep(interval_s)
        collect = process.memory_info().rss - low > cycle_growth_bytes
        if collect:
            gc.collect()  # a full collection costs about 0.1 s here, so only once the heap has grown
        try_malloc_trim()
        rss = process.memory_info().rss
        low = rss if collect else min(low, rss)


if __name__ == "__main__":
    print(huge_page_heap_env()["GLIBC_TUNABLES"])  # for shell scripts: export GLIBC_TUNABLES=$(python -m fedsm.ops.heap)
