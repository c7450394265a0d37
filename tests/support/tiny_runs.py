"""Tiny synthetic data and NVFlare simulator runs, shared by the e2e, poc and gap tests.

A tiny run takes about a minute, much of it waiting (NVFlare's task polling, start-up handshakes,
shutdown grace periods). The suite saves time in two ways: what several tests read is made once per
session (`shared_tiny_data`, `shared_fedsm_run`), and the independent runs of one test module may go
side by side (`start_simulator`: at most FEDSM_TEST_PARALLEL_RUNS at once, default 2; 1 runs them one
after another)."""

import dataclasses
import os
import signal
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

CLIENTS = ["client_I2CVB", "client_MSD", "client_NCI_ISBI_3T"]
NVFLARE = Path(sys.executable).with_name("nvflare")
REPO = Path(__file__).resolve().parents[2]


def make_tiny_data(root: Path, with_unseen: bool = False) -> Path:
    """Three synthetic sites (plus the held-out UNSEEN site if asked) with 3 cases each, sliced and split
    into `root/dataset_2D` and `root/datalist_2D`."""
    command = [sys.executable, "-m", "data_preparation.synthetic", "--output", str(root), "--cases-per-site", "3",
               "--seed", "1"] + (["--with-unseen"] if with_unseen else [])
    subprocess.run(command, check=True, capture_output=True)
    return root


def run_simulator(job: Path, workspace: Path, clients=CLIENTS, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `job` with `nvflare simulator -t <number of clients>`; its output is also kept in
    `<workspace>.log`. A run past `timeout` is killed (its process group; the client workers, in sessions
    of their own, follow their parent) and fails the test with the end of its output."""
    command = [str(NVFLARE), "simulator", str(job), "-w", str(workspace), "-c", ",".join(clients),
               "-t", str(len(clients))]
    log = workspace.parent / f"{workspace.name}.log"
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:  # it ended at the deadline
            pass
        output, _ = process.communicate(timeout=60)  # client workers (own sessions) exit with their parent
        log.write_text(output)
        raise AssertionError(f"the simulator did not finish in {timeout} s (log: {log}):\n{output[-3000:]}")
    log.write_text(output)
    return subprocess.CompletedProcess(command, process.returncode, output, "")


# ---- independent runs side by side

_POOL: list[ThreadPoolExecutor] = []
_STARTED: list[Future] = []


def parallel_runs() -> int:
    """How many simulator runs `start_simulator` lets go at once (FEDSM_TEST_PARALLEL_RUNS, default 2)."""
    return max(1, int(os.environ.get("FEDSM_TEST_PARALLEL_RUNS", "2")))


def start_simulator(job: Path, workspace: Path, clients=CLIENTS,
                    timeout: float = 300) -> "Future[subprocess.CompletedProcess]":
    """`run_simulator` in the background: its future. Runs start in the order asked, at most
    `parallel_runs()` at once; `timeout` counts from a run's start. Only for runs whose tests do not
    time anything: a test that depends on how fast a run goes (train timeouts) must not overlap one,
    so every run started must be waited for within its test module."""
    if not _POOL:
        _POOL.append(ThreadPoolExecutor(parallel_runs(), thread_name_prefix="simulator"))
    future = _POOL[0].submit(run_simulator, job, workspace, clients, timeout)
    _STARTED.append(future)
    return future


def finish(futures) -> None:
    """Cancel the runs not yet started, wait for the others (their errors are their tests' to report):
    a module's runs must not overlap the next module's."""
    for future in futures:
        future.cancel()
    for future in futures:
        if not future.cancelled():
            future.exception()


def settle() -> None:
    """Wait until every run `start_simulator` started is over: a test that races a timeout calls this
    first, so that it has the machine to itself (normally at once, as modules wait for their runs)."""
    for future in list(_STARTED):
        if not future.cancelled():
            future.exception()
    _STARTED.clear()


# ---- data and a run shared by the whole session

def tiny_fedsm_overrides(data: Path, **extra) -> dict:
    """The tiny FedSM job on `data`: 32x32 slices, the light selector, 2 rounds."""
    return {
        "train.dataset_base_dir": str(data / "dataset_2D"),
        "train.datalist_json_path": str(data / "datalist_2D"),
        "train.image_size": 32,
        "train.selector": "light",
        "server.num_rounds": 2,
        **extra,
    }


@dataclasses.dataclass(frozen=True)
class TinyRun:
    """A finished simulator run of `job`: its workspace and output (stdout and stderr)."""

    job: Path
    workspace: Path
    output: str


_SESSION: dict = {}


def shared_tiny_data(tmp_path_factory) -> Path:
    """Synthetic data made once per session (`make_tiny_data` with the UNSEEN site, which a run of the
    three training sites never reads). Tests read it; one that needs other data copies it first."""
    if "data" not in _SESSION:
        _SESSION["data"] = make_tiny_data(tmp_path_factory.mktemp("data"), with_unseen=True)
    return _SESSION["data"]


def shared_fedsm_run(tmp_path_factory) -> TinyRun:
    """The tiny FedSM job (`tiny_fedsm_overrides`, every other setting as the job ships) on the shared
    data, run once per session in the simulator and read by the e2e and gap tests. Read it, never write
    into it: a test that resumes from it writes its own workspace."""
    if "fedsm_run" not in _SESSION:
        from fedsm.job_config import derive_job

        root = tmp_path_factory.mktemp("fedsm_run")
        job = derive_job(REPO / "jobs" / "fedsm_prostate", root / "job",
                         tiny_fedsm_overrides(shared_tiny_data(tmp_path_factory)))
        result = run_simulator(job, root / "ws", CLIENTS, timeout=400)
        if result.returncode != 0:
            _SESSION["fedsm_run"] = AssertionError(f"the shared tiny FedSM run failed (exit {result.returncode}, "
                                                   f"log {root / 'ws.log'}):\n{result.stdout[-3000:]}")
        else:
            _SESSION["fedsm_run"] = TinyRun(job, root / "ws", result.stdout + result.stderr)
    if isinstance(_SESSION["fedsm_run"], AssertionError):
        raise _SESSION["fedsm_run"]
    return _SESSION["fedsm_run"]
