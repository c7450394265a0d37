"""The guard against NVFlare 2.9.0's simulator start-up race (two client workers getting one name), applied
only where the simulator builds the job."""

import argparse
import importlib
import pickle
import threading
from multiprocessing.reduction import ForkingPickler

from fedsm.flare.simulator_guard import (
    SIMULATOR_RUNNER_MODULE,
    PerThreadBuildContext,
    built_by_simulator,
    make_simulator_client_start_thread_safe,
)


def _start_workers_at_once(build_ctx: dict, names: list[str]) -> list[dict]:
    """What each simulator client thread does: write its name, then pickle the context to its worker.
    The barrier makes every thread write before any pickles, the interleaving that hangs a run."""
    barrier = threading.Barrier(len(names))
    sent: dict[str, dict] = {}

    def start(name):
        build_ctx["client_name"] = name
        barrier.wait()
        sent[name] = pickle.loads(ForkingPickler.dumps(build_ctx))

    threads = [threading.Thread(target=start, args=(name,)) for name in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return [sent[name] for name in names]


def test_a_shared_dict_sends_one_client_name_to_every_worker():
    sent = _start_workers_at_once({"server_host": "localhost"}, ["client_A", "client_B", "client_C"])
    assert len({ctx["client_name"] for ctx in sent}) == 1


def test_per_thread_context_sends_each_worker_its_own_name_as_a_plain_dict():
    names = ["client_A", "client_B", "client_C"]
    build_ctx = PerThreadBuildContext({"server_host": "localhost", "client_name": None})
    sent = _start_workers_at_once(build_ctx, names)
    assert [ctx["client_name"] for ctx in sent] == names
    assert all(type(ctx) is dict and ctx["server_host"] == "localhost" for ctx in sent)


def test_entries_written_in_one_thread_stay_in_that_thread():
    build_ctx = PerThreadBuildContext({"client_name": "base"})
    build_ctx["client_name"] = "main"
    seen = []
    thread = threading.Thread(target=lambda: seen.append((build_ctx["client_name"], build_ctx.get("missing", 0))))
    thread.start()
    thread.join()
    assert seen == [("base", 0)]
    assert build_ctx["client_name"] == "main" and "client_name" in build_ctx
    assert dict(build_ctx) == {**build_ctx} == build_ctx.copy() == {"client_name": "main"}


def test_patch_gives_the_real_simulator_client_runner_a_per_thread_context(tmp_path):
    module = importlib.import_module(SIMULATOR_RUNNER_MODULE)
    assert make_simulator_client_start_thread_safe()
    assert make_simulator_client_start_thread_safe()  # a second call keeps one wrapper
    args = argparse.Namespace(workspace=str(tmp_path), set=[], threads=1, end_run_for_all=False)
    runner = module.SimulatorClientRunner(str(tmp_path), args, [], {}, argparse.Namespace(), {"client_name": None})
    # no clients to run: the runner's own thread stops at once and logs why
    runner.run(gpu=None)
    assert isinstance(runner.build_ctx, PerThreadBuildContext)
    assert runner.build_ctx["client_name"] is None


def test_only_a_call_from_the_simulator_runner_counts_as_built_by_the_simulator():
    runner_class = importlib.import_module(SIMULATOR_RUNNER_MODULE).SimulatorRunner

    def start_server_app(self):  # what the simulator's server thread runs, here on a bare runner
        return built_by_simulator()

    assert not built_by_simulator()
    assert start_server_app(runner_class.__new__(runner_class))
    assert not start_server_app(object())
