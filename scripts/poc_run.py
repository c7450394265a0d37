#!/usr/bin/env python
# Run by: users. User commands live in scripts/, maintainer tools in tools/.
"""FedSM in NVFlare POC mode, end to end on one machine: a real server and three client processes.

Steps: a POC workspace for the sites `client_I2CVB`, `client_MSD`, `client_NCI_ISBI_3T` with every
listener on 127.0.0.1; start; submit a CPU-sized job derived from jobs/fedsm_prostate; wait; download
the results; run the test-only evaluation on them; stop every process the run started (also on
failure, Ctrl-C or SIGTERM).

Everything lives in one folder this script owns (`--root`, default /tmp/nvflare/fedsm_poc):

    home/        HOME of the NVFlare commands (they keep their config in ~/.nvflare: here, not yours)
    project.yml  the POC project (sites, port)
    workspace/   the POC workspace (NVFLARE_POC_WORKSPACE): startup kits, site folders, logs
    job/         the submitted job
    download/    the downloaded job results (server app folder with the best checkpoints)
    data/        synthetic data, when --data is not given

Usage (from the repository root, after scripts/setup.sh):

    .venv/bin/python scripts/poc_run.py                      # synthetic data, 3 rounds at 64x64
    .venv/bin/python scripts/poc_run.py --data /tmp/nvflare/fedsm_data --set server.num_rounds=10
    .venv/bin/python scripts/poc_run.py --code installed     # no code in the job: sites use the
                                                             # installed `fedsm` package + allow-list

`--code byoc` (default) ships the `fedsm` package in the job's app/custom ("bring your own code");
`--code installed` submits the job without code and adds `fedsm.flare.` to every site's
`local/resources.json` class_allow_list, as a production site with the package pre-installed would.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CLIENTS = ("client_I2CVB", "client_MSD", "client_NCI_ISBI_3T")
SERVER = "server"
PROJECT = "fedsm_poc"
ADMIN = "admin@fedsm.local"
ALLOW_LIST_PREFIX = "fedsm.flare."
ROOT_TAG = ".fedsm_poc_run"  # marks a --root this script made (and may replace)
RUN_MARKER = "FEDSM_POC_RUN"  # environment variable that tags every process of one federation
PROGRESS = ("Round ", "validation (mean over clients)", "rejected", "FedSM finished", "cannot start",
            "no result from", "ERROR")
CPU_CONFIG = {"train.image_size": 64, "train.selector": "light", "server.num_rounds": 3,
              # every site on this host: share its cores, as the simulator does (auto threads would give
              # each client process all cores and make them fight; a POC round was up to 10x slower)
              "train.torch_threads": max(1, (os.cpu_count() or 1) // len(CLIENTS))}


class PocError(RuntimeError):
    """An NVFlare command failed or the job did not finish as expected; the message says what and where."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def project_yaml(clients, port: int) -> str:
    """A POC project: one server, one project admin, the FedSM clients; admin and FL share `port`."""
    lines = [
        "api_version: 3", f"name: {PROJECT}", "description: FedSM POC federation on one machine",
        "participants:",
        f"  - {{name: {SERVER}, type: server, org: fedsm, fed_learn_port: {port}, admin_port: {port}}}",
        f"  - {{name: {ADMIN}, type: admin, org: fedsm, role: project_admin}}",
        *[f"  - {{name: {client}, type: client, org: fedsm}}" for client in clients],
        "builders:",
        "  - path: nvflare.lighter.impl.workspace.WorkspaceBuilder",
        "    args: {template_file: [master_template.yml]}",
        "  - path: nvflare.lighter.impl.static_file.StaticFileBuilder",
        "    args: {config_folder: config}",
        "  - path: nvflare.lighter.impl.cert.CertBuilder",
        "  - path: nvflare.lighter.impl.signature.SignatureBuilder",
    ]
    return "\n".join(lines) + "\n"


def _pids_with_marker(marker: str) -> list[int]:
    """Processes of this user whose environment holds the entry `marker` (every process a federation started)."""
    needle = b"\0" + marker.encode() + b"\0"
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in b"\0" + (entry / "environ").read_bytes():
                found.append(int(entry.name))
        except OSError:  # gone, or not ours
            continue
    return found


class PocFederation:
    """One POC federation in `root`: prepare, start, submit, wait, download, stop.

    A context manager: leaving the block stops the federation and ends every process it started
    (found by an environment marker, then SIGTERM, then SIGKILL by process id).
    """

    def __init__(self, root: str | Path, clients=CLIENTS, port: int | None = None, log=print):
        self.root = Path(root).resolve()
        self.clients = tuple(clients)
        self.port = port or free_port()
        self.log = log
        self.workspace = self.root / "workspace"
        self.token = secrets.token_hex(8)
        from fedsm.ops.heap import huge_page_heap_env

        # the start scripts run `python3`: this interpreter's, with NVFlare and fedsm installed
        bin_dir = str(Path(sys.executable).parent)
        self.env = huge_page_heap_env({**os.environ, "HOME": str(self.root / "home"),
                                       "NVFLARE_POC_WORKSPACE": str(self.workspace),
                                       "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
                                       RUN_MARKER: self.token})
        self.started = False

    # ---- NVFlare command line
    def nvflare(self, *args: str, timeout: float = 120) -> dict:
        """Run `nvflare --format json ARGS` in this federation's environment; the `data` of its answer."""
        command = [str(Path(sys.executable).with_name("nvflare")), "--format", "json", *args]
        result = subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=timeout,
                                stdin=subprocess.DEVNULL, cwd=self.root)
        answer = None
        for line in reversed(result.stdout.strip().splitlines()):
            try:
                answer = json.loads(line)
                break
            except json.JSONDecodeError:
                continue
        if result.returncode != 0 or not answer or answer.get("status") != "ok":
            detail = (answer or {}).get("detail") or (answer or {}).get("message") or result.stderr[-2000:]
            raise PocError(f"'nvflare {' '.join(args)}' failed (exit {result.returncode}): {detail or result.stdout[-2000:]}")
        return answer.get("data", {})

    def site_dir(self, site: str) -> Path:
        return self.workspace / PROJECT / "prod_00" / site

    # ---- life cycle
    def prepare(self, allow_installed_code: bool = False) -> None:
        """POC startup kits for the server, the admin and the clients, every listener on 127.0.0.1."""
        (self.root / "home").mkdir(parents=True, exist_ok=True)
        project = self.root / "project.yml"
        project.write_text(project_yaml(self.clients, self.port))
        self.nvflare("poc", "prepare", "-i", str(project), "--force")
        # POC names the server host "server", which NVFlare binds on all interfaces; a loopback
        # service target makes the server bind 127.0.0.1 (clients and admin already use localhost).
        server_config = self.site_dir(SERVER) / "startup" / "fed_server.json"
        config = json.loads(server_config.read_text())
        for server in config["servers"]:
            server["service"]["target"] = f"localhost:{self.port}"
            server["admin_server"] = "localhost"
        server_config.write_text(json.dumps(config, indent=2))
        if allow_installed_code:
            for site in (SERVER, *self.clients):
                allow_component_prefix(self.site_dir(site) / "local" / "resources.json", ALLOW_LIST_PREFIX)

    def start(self, timeout: int = 120) -> None:
        self.started = True
        self.nvflare("poc", "start", "--timeout", str(timeout), timeout=timeout + 60)
        self.log(f"[poc] server and {len(self.clients)} clients up on 127.0.0.1:{self.port}")

    def submit(self, job_dir: str | Path) -> str:
        job_id = self.nvflare("job", "submit", "-j", str(job_dir))["job_id"]
        self.log(f"[poc] submitted {job_dir} as job {job_id}")
        return job_id

    def job_status(self, job_id: str) -> str:
        return self.nvflare("job", "meta", job_id)["status"]

    def server_job_log(self, job_id: str) -> Path:
        """The server's log of a running job (a finished job's log is in its download: workspace/log.txt)."""
        return self.site_dir(SERVER) / job_id / "log.txt"

    def client_job_log(self, client: str, job_id: str) -> Path:
        return self.site_dir(client) / job_id / "log.txt"

    def wait(self, job_id: str, timeout: float, poll: float = 2.0) -> str:
        """Wait for the job to finish (printing the server's round progress); its final status."""
        deadline, shown = time.monotonic() + timeout, 0
        while True:
            status = self.job_status(job_id)
            shown = self._show_progress(job_id, shown)
            if status.startswith("FINISHED") or status in ("ABANDONED", "FAILED"):
                return status
            if time.monotonic() > deadline:
                raise PocError(f"job {job_id} still {status} after {timeout:.0f} s; server log: "
                               f"{self.server_job_log(job_id)}")
            time.sleep(poll)

    def _show_progress(self, job_id: str, shown: int) -> int:
        log = self.server_job_log(job_id)
        if not log.is_file():
            return shown
        lines = log.read_text(errors="replace").splitlines()
        for line in lines[shown:]:
            if any(key in line for key in PROGRESS):
                self.log("[poc]   " + line.split("] - ", 1)[-1][:300])
        return len(lines)

    def download(self, job_id: str, destination: str | Path) -> Path:
        data = self.nvflare("job", "download", job_id, "-o", str(destination), "--force", timeout=300)
        return Path(data.get("download_path") or Path(destination) / job_id)

    def processes(self) -> list[int]:
        """Every live process this federation started (server, clients, their job processes, watchdogs)."""
        return _pids_with_marker(f"{RUN_MARKER}={self.token}")

    def stop(self, grace: float = 20.0) -> None:
        """Stop the federation; then end, by process id, whatever it started and is still running."""
        if not self.started:
            return
        self.started = False
        in_main_thread = threading.current_thread() is threading.main_thread()
        deferred = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)} \
            if in_main_thread else {}  # a second Ctrl-C must not cut the clean-up short
        try:
            self._stop(grace)
        finally:
            for sig, handler in deferred.items():
                signal.signal(sig, handler)
        self.log("[poc] stopped")

    def _stop(self, grace: float) -> None:
        try:
            self.nvflare("poc", "stop", timeout=90)
        except (PocError, subprocess.TimeoutExpired) as error:
            # e.g. after a server restart NVFlare still lists the killed job as running and refuses to stop
            self.log(f"[poc] 'nvflare poc stop' failed ({error}); ending the processes directly")
            grace = 0
        deadline = time.monotonic() + grace  # the site watchdogs notice the stop within 5 s
        while self.processes() and time.monotonic() < deadline:
            time.sleep(0.5)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            left = self.processes()
            if not left:
                break
            self.log(f"[poc] sending {sig.name} to {len(left)} leftover processes {left}")
            for pid in left:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            time.sleep(3)

    def __enter__(self) -> "PocFederation":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def allow_component_prefix(resources_file: Path, prefix: str) -> None:
    """Add `prefix` to a site's `class_allow_list` (the component classes a job without code may build).

    A site without `local/resources.json` runs on `resources.json.default`: start from a copy of it.
    """
    source = resources_file if resources_file.is_file() else resources_file.with_name(resources_file.name + ".default")
    resources = json.loads(source.read_text())
    allow = resources.setdefault("class_allow_list", [])
    if prefix not in allow:
        allow.append(prefix)
    resources_file.write_text(json.dumps(resources, indent=2))


def make_job(destination: Path, data: Path, overrides: dict, code: str) -> Path:
    """A job derived from jobs/fedsm_prostate for `data`; without app/custom when `code` is 'installed'."""
    from fedsm.job_config import derive_job

    job = derive_job(REPO / "jobs" / "fedsm_prostate", destination, {
        **CPU_CONFIG, "train.dataset_base_dir": str(data / "dataset_2D"),
        "train.datalist_json_path": str(data / "datalist_2D"), **overrides})
    if code == "installed":
        shutil.rmtree(job / "app" / "custom")
    return job


def synthetic_data(destination: Path) -> Path:
    if not (destination / "datalist_2D").is_dir():
        subprocess.run([sys.executable, "-m", "data_preparation.synthetic", "--output", str(destination),
                        "--cases-per-site", "3", "--seed", "1"], check=True, capture_output=True, cwd=REPO)
    return destination


def _raise_on_signal(signum, _frame):
    raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")


def main(argv: list[str] | None = None) -> int:
    from fedsm.job_config import parse_override

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="/tmp/nvflare/fedsm_poc",
                        help="folder this run owns: empty, new, or an earlier run's (then replaced)")
    parser.add_argument("--data", help="prepared data (holds dataset_2D/ and datalist_2D/); default: synthetic "
                                       "data made in ROOT/data")
    parser.add_argument("--code", choices=("byoc", "installed"), default="byoc",
                        help="ship the fedsm code with the job (byoc), or use the package installed on each site")
    parser.add_argument("--port", type=int, help="server port on 127.0.0.1 (default: a free port)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds to wait for the job")
    parser.add_argument("--set", dest="overrides", action="append", type=parse_override, default=[],
                        metavar="SECTION.KEY=VALUE", help="job setting, as in `python -m fedsm.job_config`")
    args = parser.parse_args(argv)

    root = Path(args.root).resolve()
    if root.exists() and any(root.iterdir()) and not (root / ROOT_TAG).is_file():
        parser.error(f"--root {root} exists and is not a folder of an earlier run of this script; choose another")
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    (root / ROOT_TAG).write_text("made by scripts/poc_run.py; replaced by its next run\n")
    # SIGINT too: a shell starts background commands with SIGINT ignored, and Python keeps that
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_on_signal)
    started = time.monotonic()
    try:
        data = Path(args.data).resolve() if args.data else synthetic_data(root / "data")
        job = make_job(root / "job", data, dict(args.overrides), args.code)
        print(f"[poc] job {job} ({args.code}), data {data}")
        with PocFederation(root, port=args.port) as federation:
            federation.prepare(allow_installed_code=args.code == "installed")
            federation.start()
            job_id = federation.submit(job)
            status = federation.wait(job_id, args.timeout)
            print(f"[poc] job {job_id}: {status}")
            results = federation.download(job_id, root / "download")
            print(f"[poc] results downloaded to {results}")
            if status != "FINISHED:COMPLETED":
                raise PocError(f"job {job_id} ended {status}; server log: {results / 'workspace' / 'log.txt'}, "
                               f"client logs: {federation.workspace}/{PROJECT}/prod_00/<client>/{job_id}/log.txt")
    except (PocError, subprocess.TimeoutExpired) as error:
        print(f"[poc] FAILED: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as interrupt:
        print(f"[poc] interrupted ({interrupt}); every process of the federation was stopped", file=sys.stderr)
        return 130
    print("[poc] test-only evaluation of the super model:")
    evaluation = subprocess.run([sys.executable, "-m", "result_stat.prostate_2d_test_only", "--workspace",
                                 str(results), "--output_json", str(root / "test_only.json")], cwd=REPO)
    print(f"[poc] done in {time.monotonic() - started:.0f} s; results: {results}")
    return evaluation.returncode


if __name__ == "__main__":
    sys.exit(main())
