"""Helpers of the deployment and fault tests: tiny jobs, the simulator, processes and sockets of a POC."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import tiny_runs
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))

from poc_run import ADMIN, CLIENTS, PocError, PocFederation, make_job  # noqa: E402

__all__ = ["ADMIN", "CLIENTS", "PocError", "PocFederation", "REPO", "add_result_filters", "kill",
           "listening_addresses", "make_job", "run_simulator", "scalars", "site_processes", "tiny_job", "wait_for_job",
           "wait_for_line"]


def tiny_job(destination: Path, data: Path, **overrides) -> Path:
    """A 32x32, light-selector job on `data` that ships its code (BYOC); poc_run shares the cores among the
    clients."""
    return make_job(destination, data, {"train.image_size": 32, "server.num_rounds": 2, **overrides},
                    "byoc")


def run_simulator(job: Path, workspace: Path, timeout: float = 300,
                  clients=CLIENTS) -> tuple[subprocess.CompletedProcess, float]:
    """Run the job in the NVFlare simulator with `clients`; the result (log also in `<workspace>.log`) and
    its seconds."""
    started = time.monotonic()
    result = tiny_runs.run_simulator(job, workspace, clients, timeout)
    return result, time.monotonic() - started


def add_result_filters(job: Path, faults: dict[str, str], from_round: int = 0) -> None:
    """Corrupt the train results of some clients (`{client: fault}`, see tests/e2e/fault_injection.py)."""
    shutil.copy(REPO / "tests" / "e2e" / "fault_injection.py", job / "app" / "custom" / "fault_injection.py")
    config_file = job / "app" / "config" / "config_fed_client.json"
    config = json.loads(config_file.read_text())
    config["task_result_filters"] = [{"tasks": ["train"], "filters": [
        {"path": "fault_injection.CorruptUpdate", "args": {"client": client, "fault": fault, "from_round": from_round}}
        for client, fault in faults.items()]}]
    config_file.write_text(json.dumps(config, indent=2))


def scalars(event_dir: Path, tag: str) -> dict[int, float]:
    """step -> value of one TensorBoard tag in a folder of event files, e.g. a site's folder of the
    server's tracking (`<downloaded job>/workspace/tb_events/<site>`); empty when the tag was never written."""
    accumulator = EventAccumulator(str(event_dir))
    accumulator.Reload()
    if tag not in accumulator.Tags()["scalars"]:
        return {}
    return {event.step: event.value for event in accumulator.Scalars(tag)}


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def site_processes(federation: PocFederation, site: str) -> list[int]:
    """The Python processes of one site of the federation: its parent process and its job processes."""
    folder = str(federation.site_dir(site))
    return [pid for pid in federation.processes()
            if "python" in Path(_cmdline(pid)[0] if _cmdline(pid) else "").name and folder in _cmdline(pid)]


def kill(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _ended(status: str) -> bool:
    return status.startswith("FINISHED") or status in ("ABANDONED", "FAILED")  # as PocFederation.wait


def wait_for_job(federation: PocFederation, job_id: str, timeout: float, end_line: str = "FedSM finished.",
                 status_every: float = 30.0) -> str:
    """The job's final status, as `federation.wait` returns it, without that method's polling while the
    job runs: each poll (`nvflare job meta`) is a new Python process that takes seconds of CPU from the
    job on a small machine. Until the server's job log shows `end_line` (the workflow is over), only that
    file is read, and the status asked every `status_every` s (a job may end without the line); then the
    status is polled until NVFlare reports the end."""
    deadline = time.monotonic() + timeout
    log, ask_at = federation.server_job_log(job_id), time.monotonic() + status_every
    while time.monotonic() < deadline:
        if log.is_file() and end_line in log.read_text(errors="replace"):
            break
        if time.monotonic() >= ask_at:
            status = federation.job_status(job_id)
            if _ended(status):
                return status
            ask_at = time.monotonic() + status_every
        time.sleep(0.5)
    return federation.wait(job_id, timeout=max(deadline - time.monotonic(), 1.0), poll=0.5)


def wait_for_line(path: Path, text: str, timeout: float) -> None:
    """Wait until the file at `path` holds `text`."""
    deadline = time.monotonic() + timeout
    while not (path.is_file() and text in path.read_text(errors="replace")):
        if time.monotonic() > deadline:
            raise TimeoutError(f"'{text}' did not appear in {path} within {timeout:.0f} s")
        time.sleep(0.2)


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    try:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    except OSError:
        pass
    return inodes


def _address(hex_address: str) -> str:
    host, port = hex_address.split(":")
    if len(host) == 8:
        ip = ".".join(str(b) for b in reversed(bytes.fromhex(host)))
    else:
        words = [bytes.fromhex(host[i:i + 8])[::-1].hex() for i in range(0, 32, 8)]
        ip = ":".join(w[j:j + 4] for w in words for j in (0, 4))
    return f"{ip}:{int(port, 16)}"


def listening_addresses(pids: list[int]) -> list[str]:
    """host:port of every TCP socket in LISTEN state held by the processes `pids`."""
    inodes = set().union(*(_socket_inodes(pid) for pid in pids))
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:
                found.append(_address(fields[1]))
    return found
