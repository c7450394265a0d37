"""scripts/fedsm_recipe.py as the tests run it: a subprocess with `--set` settings and a time limit."""

import json
import subprocess
import sys

import psutil
from tiny_runs import REPO

SCRIPT = REPO / "scripts" / "fedsm_recipe.py"


def as_settings(overrides: dict) -> list[str]:
    """`--set key=value` arguments of the script, values as JSON."""
    return [f"--set={key}={json.dumps(value)}" for key, value in overrides.items()]


def run_script(args: list[str], timeout: float, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run scripts/fedsm_recipe.py; past `timeout` its whole process tree (the simulator runs in a session
    of its own) is killed and the test fails with the end of its output."""
    process = subprocess.Popen([sys.executable, str(SCRIPT), *args], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, cwd=REPO, env=env)
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        for child in psutil.Process(process.pid).children(recursive=True) + [psutil.Process(process.pid)]:
            child.kill()
        output, _ = process.communicate(timeout=60)
        raise AssertionError(f"{SCRIPT.name} did not finish in {timeout} s:\n{output[-3000:]}")
    return subprocess.CompletedProcess(process.args, process.returncode, output, "")
