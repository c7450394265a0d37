"""A job whose packaged code is older than the repo's stops at start instead of running old code.

The server's workflow makes that check, so the run has one client: the others would only start up."""

import shutil

from e2e_helpers import REPO, make_job, tiny_overrides
from tiny_runs import CLIENTS, run_simulator

from fedsm.job_config import package_code


def test_simulator_stops_a_stale_job_at_start(tiny_data, tmp_path):
    job = make_job(tmp_path, "job", tiny_overrides(tiny_data))
    source = tmp_path / "src" / "fedsm"
    shutil.copytree(REPO / "custom" / "fedsm", source, ignore=shutil.ignore_patterns("__pycache__"))
    package_code(job, source)
    changed = source / "core" / "soft_pull.py"
    changed.write_text(changed.read_text() + "\n# changed after set-up\n")
    result = run_simulator(job, tmp_path / "ws", CLIENTS[:1], timeout=180)
    assert "re-run scripts/setup.sh" in result.stdout and str(source) in result.stdout
    assert "Round 0 of" not in result.stdout
