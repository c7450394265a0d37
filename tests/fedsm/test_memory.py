"""Freed heap handed back to the system."""

import gc
import os
import subprocess
import sys
import threading
import time
import weakref
from pathlib import Path

import numpy as np
import psutil
import pytest

from fedsm.ops.heap import huge_page_heap_env, keep_heap_trimmed, release_free_heap


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_freed_heap_goes_back_to_the_system():
    """Mid-size buffers freed between ones still held stay in glibc's heap until trimmed."""
    rss = lambda: psutil.Process().memory_info().rss  # noqa: E731
    blocks = [np.ones(64 * 1024, np.uint8) for _ in range(4800)]  # 300 MiB of 64 KiB buffers, from the heap
    held = rss()
    keep = blocks[::50]
    del blocks  # glibc keeps these pages: they lie between buffers still held
    release_free_heap()
    assert keep and held - rss() > 200 * 2**20


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_one_trimming_thread_per_process():
    keep_heap_trimmed(0.05)
    keep_heap_trimmed(0.05)
    assert [thread.name for thread in threading.enumerate()].count("fedsm-heap-trim") == 1


class _Node:
    """A reference cycle holding a buffer, as NVFlare's streamed messages are held."""

    def __init__(self, buffer):
        self.buffer, self.me = buffer, self


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_buffers_left_in_reference_cycles_are_collected_as_the_heap_grows():
    keep_heap_trimmed(0.05)
    time.sleep(0.2)
    gc.disable()  # only the trimming thread may collect the cycle
    try:
        node = _Node(np.ones(100 * 2**20, np.uint8))
        collected = weakref.ref(node)
        del node
        held = np.ones(400 * 2**20, np.uint8)  # the next messages arrive
        deadline = time.monotonic() + 10
        while collected() is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert held.size and collected() is None
    finally:
        gc.enable()


def _glibc_at_least(major: int, minor: int) -> bool:
    name, _, version = (os.confstr("CS_GNU_LIBC_VERSION") or "").partition(" ")
    return name == "glibc" and tuple(int(p) for p in version.split(".")[:2]) >= (major, minor)


def _transparent_huge_pages_mode() -> str:
    """'always', 'madvise' or 'never': the kernel's setting, in brackets in the file."""
    setting = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    return setting.read_text().split("[")[1].split("]")[0] if setting.exists() else "never"


def _heap_huge_page_kib(env: dict) -> int:
    """AnonHugePages of a child that allocates 200 MiB of 64 KiB buffers, as NVFlare's transfer threads do."""
    program = ("b = [bytearray(64 * 1024) for _ in range(3200)]\n"
               "print(open('/proc/self/smaps_rollup').read().split('AnonHugePages:')[1].split()[0])")
    return int(subprocess.run([sys.executable, "-c", program], env=env, capture_output=True, text=True,
                              check=True).stdout)


def test_huge_page_tunable_joins_the_existing_ones_and_respects_a_choice():
    assert huge_page_heap_env({})["GLIBC_TUNABLES"] == "glibc.malloc.hugetlb=1"
    env = huge_page_heap_env({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2", "HOME": "/h"})
    assert env == {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1", "HOME": "/h"}
    assert huge_page_heap_env({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"})["GLIBC_TUNABLES"] == "glibc.malloc.hugetlb=0"


@pytest.mark.skipif(not _glibc_at_least(2, 35) or _transparent_huge_pages_mode() == "never",
                    reason="glibc's hugetlb tunable and transparent huge pages")
def test_a_process_started_with_the_tunable_holds_its_heap_in_huge_pages():
    plain = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    assert _heap_huge_page_kib(huge_page_heap_env(plain)) >= 100 * 1024
    if _transparent_huge_pages_mode() == "madvise":  # only on request: without the tunable, none
        assert _heap_huge_page_kib(plain) < 100 * 1024
