"""Guard against a start-up race in NVFlare 2.9's simulator that can hang a run.

The simulator starts one worker process per client thread. Each thread writes its client's name into
one build context shared by all threads, then pickles that context to its worker. When two threads
start workers at the same moment (`-t 3` with three clients does, on a busy machine about one run in
six), both workers can get the same name: two processes then claim the same cell, evict each other's
connection, one task reply is lost and the round waits forever. Giving each thread its own view of the
build context removes the race. `import nvflare` loads the simulator module everywhere, so the class is
patched in POC and production too, where nothing uses it.
"""

import sys
import threading
from collections import UserDict
from collections.abc import Mapping

from nvflare.apis.fl_component import FLComponent

SIMULATOR_RUNNER_MODULE = "nvflare.private.fed.app.simulator.simulator_runner"
_PATCHED = "_fedsm_per_thread_build_ctx"


class PerThreadBuildContext(UserDict):
    """A mapping whose entries are copied per thread on first use: what one thread writes, only that
    thread reads (through every mapping method), and pickling sends that thread's entries as a plain dict."""

    def __init__(self, base: Mapping):
        self._base = dict(base)
        self._local = threading.local()

    @property
    def data(self) -> dict:
        own = getattr(self._local, "entries", None)
        if own is None:
            own = self._local.entries = dict(self._base)
        return own

    def copy(self) -> dict:
        return dict(self.data)

    def __reduce_ex__(self, protocol):
        return dict, (dict(self.data),)


def make_simulator_client_start_thread_safe() -> bool:
    """Patch the simulator's client runner (if this process runs one) so each client thread gets its own
    build context. Returns whether the patch is in place; safe to call more than once."""
    runner_module = sys.modules.get(SIMULATOR_RUNNER_MODULE)
    runner_class = getattr(runner_module, "SimulatorClientRunner", None)
    if runner_class is None:
        return False
    if getattr(runner_class, _PATCHED, False):
        return True
    original_run = runner_class.run

    def run(self, *args, **kwargs):
        if isinstance(getattr(self, "build_ctx", None), dict):
            self.build_ctx = PerThreadBuildContext(self.build_ctx)
        return original_run(self, *args, **kwargs)

    runner_class.run = run
    setattr(runner_class, _PATCHED, True)
    return True


class SimulatorClientStartGuard(FLComponent):
    """Server component: applies `make_simulator_client_start_thread_safe` when the job is built, which in
    the simulator is before any client thread starts."""

    def __init__(self):
        super().__init__()
        if make_simulator_client_start_thread_safe():
            self.logger.info("patched NVFlare's SimulatorClientRunner (used only by the simulator): each client "
                             "thread sends its worker its own build context")
