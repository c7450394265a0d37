"""Tiny synthetic data and NVFlare simulator runs, shared by the e2e, poc and gap tests."""

import os
import signal
import subprocess
import sys
from pathlib import Path

CLIENTS = ["client_I2CVB", "client_MSD", "client_NCI_ISBI_3T"]
NVFLARE = Path(sys.executable).with_name("nvflare")


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
