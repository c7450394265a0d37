"""Freed heap handed back to the system."""

import sys
import threading

import numpy as np
import psutil
import pytest

from fedsm.memory import keep_heap_trimmed, release_free_heap


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
