"""Freed heap handed back to the system."""

import gc
import sys
import threading
import time
import weakref

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
