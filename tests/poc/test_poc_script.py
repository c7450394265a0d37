"""scripts/poc_run.py end to end: a POC federation runs the job, the results are evaluated, and no
process, file or config outlives the run outside the folder the script owns."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from poc_helpers import REPO, wait_for_line

pytestmark = pytest.mark.poc
SCRIPT = REPO / "scripts" / "poc_run.py"


def _processes_naming(folder: Path) -> list[int]:
    """Live processes whose command line mentions `folder`."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and str(folder).encode() in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def _home_nvflare_config() -> bytes | None:
    config = Path.home() / ".nvflare" / "config.conf"
    return config.read_bytes() if config.is_file() else None


def test_poc_run_with_installed_code_completes_and_cleans_up(poc_data, tmp_path):
    root, home_config = tmp_path / "poc", _home_nvflare_config()
    result = subprocess.run([sys.executable, str(SCRIPT), "--root", str(root), "--data", str(poc_data),
                             "--code", "installed", "--set", "train.image_size=32", "--set", "server.num_rounds=1"],
                            capture_output=True, text=True, timeout=600, cwd=REPO)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "FINISHED:COMPLETED" in result.stdout and "Test Dice: " in result.stdout
    # the job carried no code: every site built the fedsm components from the installed package
    assert not (root / "job" / "app" / "custom").exists()
    # all sites run on this host: the script shares its cores among the clients
    threads = json.loads((root / "job" / "app" / "config" / "config_train.json").read_text())["torch_threads"]
    assert threads == max(1, (os.cpu_count() or 1) // 3)
    resources = json.loads((root / "workspace" / "fedsm_poc" / "prod_00" / "client_MSD" / "local" /
                            "resources.json").read_text())
    assert "fedsm.flare." in resources["class_allow_list"]
    app = next((root / "download").glob("*/workspace/app_server"))
    assert (app / "best_global_model.pt").is_file() and (app / "fedsm_state.pt").is_file()
    assert json.loads((root / "test_only.json").read_text())
    # NVFlare's CLI config went to the script's folder, not the user's home
    assert str(root / "workspace") in (root / "home" / ".nvflare" / "config.conf").read_text()
    assert _home_nvflare_config() == home_config
    assert _processes_naming(root) == []


def test_poc_run_interrupted_stops_every_process(poc_data, tmp_path):
    root = tmp_path / "poc"
    log = tmp_path / "poc_run.log"
    with log.open("w") as out:
        process = subprocess.Popen([sys.executable, str(SCRIPT), "--root", str(root), "--data", str(poc_data),
                                    "--set", "train.image_size=32"], stdout=out, stderr=subprocess.STDOUT,
                                   cwd=REPO)
        try:
            wait_for_line(log, "Round 0 of", timeout=300)  # the job is running on server and clients
            process.send_signal(signal.SIGINT)
            assert process.wait(timeout=120) == 130
        finally:
            process.kill()
    assert "interrupted" in log.read_text()
    deadline = time.monotonic() + 10
    while _processes_naming(root) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _processes_naming(root) == []
