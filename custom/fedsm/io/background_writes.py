"""Writes that run one after another on one thread while the caller goes on (the server's checkpoints
while the next round trains)."""

import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor

WRITER_NICENESS = 10  # added to the writing thread's nice value: the round's transfers go first


class BackgroundWrites:
    """A queue of writes on one thread of lower CPU priority (Linux; elsewhere the same priority): a
    1.5 GiB state write otherwise takes cores from the next round's transfers on a small server."""

    def __init__(self, timeout_s: float, thread_name: str = "fedsm_checkpoints", niceness: int = WRITER_NICENESS):
        self.timeout_s = timeout_s
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=thread_name,
                                            initializer=_lower_priority, initargs=(niceness,))
        self._pending: list[Future] = []
        self.written_seconds = 0.0  # how long the writes collected by the last `wait` ran on the thread

    def submit(self, write, *args) -> None:
        """Queue `write(*args)` behind the writes already queued."""
        self._pending.append(self._executor.submit(_timed, write, *args))

    def wait(self) -> BaseException | None:
        """Wait (at most `timeout_s` each) for every write queued so far; the first error, a
        `TimeoutError` for a write that hangs, or None. Each error is reported once; `written_seconds`
        becomes the sum of the durations of those writes that succeeded."""
        pending, self._pending = self._pending, []
        errors, self.written_seconds = [], 0.0
        for future in pending:
            try:
                error = future.exception(timeout=self.timeout_s)
            except TimeoutError:
                error = TimeoutError(f"a checkpoint write did not finish in {self.timeout_s} s")
            if error is not None:
                errors.append(error)
            else:
                self.written_seconds += future.result()
        return errors[0] if errors else None

    def shutdown(self) -> None:
        self._executor.shutdown()


def _lower_priority(niceness: int) -> None:
    """Raise this thread's nice value by `niceness` (Linux schedules threads by their own nice value)."""
    thread = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, thread, os.getpriority(os.PRIO_PROCESS, thread) + niceness)
    except (AttributeError, OSError):  # no per-thread priority on this platform: write at the caller's
        pass


def _timed(write, *args) -> float:
    """Run `write(*args)`; the seconds it took."""
    started = time.monotonic()
    write(*args)
    return time.monotonic() - started
