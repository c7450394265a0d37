"""Guard against a start-up race in NVFlare 2.9.0's simulator that can hang a run.

The simulator starts one worker process per client thread. Each thread writes its client's name into
one build context shared by all threads, then pickles that context to its worker. When two threads
start workers at the same moment (`-t 3` with three clients does, on a busy machine about one run in
six), both workers can get the same name: two processes then claim the same cell, evict each other's
connection, one task reply is lost and the round waits forever. Giving each thread its own view of the
build context removes the race. `import nvflare` loads the simulator's module in every process, so the
guard patches only where NVFlare's simulator builds the job (`built_by_simulator`); POC and production
processes keep NVFlare's class as it is.
"""

import inspect
import sys
import threading
import traceback
from collections import UserDict
from collections.abc import Mapping

import nvflare
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


def built_by_simulator() -> bool:
    """Whether this call comes, in this thread, from a method of NVFlare's `SimulatorRunner`: the simulator
    builds the server's job in its own thread, which no POC or production process runs."""
    runner_class = getattr(sys.modules.get(SIMULATOR_RUNNER_MODULE), "SimulatorRunner", None)
    callers = traceback.walk_stack(inspect.currentframe().f_back)
    return runner_class is not None and any(isinstance(frame.f_locals.get("self"), runner_class)
                                            for frame, _ in callers)


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
    """Server component: applies `make_simulator_client_start_thread_safe` when the simulator builds the job,
    which is before any client thread starts; elsewhere it does nothing."""

    def __init__(self):
        super().__init__()
        if built_by_simulator() and make_simulator_client_start_thread_safe():
            self.logger.info(f"patched NVFlare {nvflare.__version__}'s SimulatorClientRunner against NVFlare 2.9.0's "
                             "start-up race: each client thread sends its worker its own build context")
