"""Writes that run one after another on one thread while the caller goes on (the server's checkpoints
while the next round trains)."""

import time
from concurrent.futures import Future, ThreadPoolExecutor


class BackgroundWrites:
    def __init__(self, timeout_s: float, thread_name: str = "fedsm_checkpoints"):
        self.timeout_s = timeout_s
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=thread_name)
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


def _timed(write, *args) -> float:
    """Run `write(*args)`; the seconds it took."""
    started = time.monotonic()
    write(*args)
    return time.monotonic() - started
