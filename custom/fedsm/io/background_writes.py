"""Writes that run one after another on one thread while the caller goes on (the server's checkpoints
while the next round trains)."""

from concurrent.futures import Future, ThreadPoolExecutor


class BackgroundWrites:
    def __init__(self, timeout_s: float, thread_name: str = "fedsm_checkpoints"):
        self.timeout_s = timeout_s
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=thread_name)
        self._pending: list[Future] = []

    def submit(self, write, *args) -> None:
        """Queue `write(*args)` behind the writes already queued."""
        self._pending.append(self._executor.submit(write, *args))

    def wait(self) -> BaseException | None:
        """Wait (at most `timeout_s` each) for every write queued so far; the first error, a
        `TimeoutError` for a write that hangs, or None. Each error is reported once."""
        pending, self._pending = self._pending, []
        errors = []
        for future in pending:
            try:
                error = future.exception(timeout=self.timeout_s)
            except TimeoutError:
                error = TimeoutError(f"a checkpoint write did not finish in {self.timeout_s} s")
            if error is not None:
                errors.append(error)
        return errors[0] if errors else None

    def shutdown(self) -> None:
        self._executor.shutdown()
