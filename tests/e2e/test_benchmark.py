"""The benchmark script runs a tiny job in the simulator and reports every round's cost."""

import subprocess
import sys

from e2e_helpers import REPO, tiny_overrides


def test_benchmark_reports_each_round_and_peak_memory(tiny_data, tmp_path):
    overrides = tiny_overrides(tiny_data)
    overrides.pop("server.num_rounds")
    sets = [arg for key, value in overrides.items() for arg in ("--set", f"{key}={value}")]
    result = subprocess.run([sys.executable, str(REPO / "tools" / "benchmark.py"), "--rounds", "2",
                             "--workdir", str(tmp_path), *sets], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    report, _, memory = result.stdout.partition("memory per process, GiB at the round's end / peak so far:")
    rows = [line.split() for line in report.splitlines() if line.strip()[:1].isdigit()]
    assert [row[0] for row in rows] == ["0", "1"]
    memory_rows = [line for line in memory.splitlines() if line.strip()[:1].isdigit()]
    assert len(memory_rows) == 2
    for line in memory_rows:  # the server and every client, RSS now / peak in GiB
        assert "server " in line and all(f"{client} " in line for client in
                                           ("client_I2CVB", "client_MSD", "client_NCI_ISBI_3T"))
    for row in rows:
        wall, busy, aggregate, down, up = float(row[1]), float(row[2]), float(row[6]), float(row[7]), float(row[8])
        assert 0 < busy <= wall and aggregate < wall
        assert down > 0 and up > 0  # a tiny UNet pair is ~13 MB each way
    assert "peak total RSS of the process tree:" in result.stdout
