"""The benchmark script runs a tiny job in the simulator and reports every round's cost and its parts.

One `--floor` run serves the module: the floor changes the job's data and settings, not the report."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from e2e_helpers import REPO, server_app, tiny_overrides

from fedsm.flare.federated_evaluation import RESULTS_FILE
from fedsm.flare.round_costs import PARTS, RECORD_FILE

CLIENTS = ("client_I2CVB", "client_MSD", "client_NCI_ISBI_3T")
PARTS_TITLE = "parts of each round, s:"
MEMORY_TITLE = "memory per process, GiB at the round's end / peak so far:"


def _run_benchmark(tiny_data: Path, workdir: Path, *options: str) -> str:
    overrides = tiny_overrides(tiny_data)
    overrides.pop("server.num_rounds")
    sets = [arg for key, value in overrides.items() for arg in ("--set", f"{key}={value}")]
    result = subprocess.run([sys.executable, str(REPO / "tools" / "benchmark.py"), "--rounds", "2",
                             "--workdir", str(workdir), *sets, *options], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return result.stdout


def _numbered_rows(text: str) -> list[list[str]]:
    return [line.split() for line in text.splitlines() if line.strip()[:1].isdigit()]


def _check_parts(stdout: str, workdir: Path) -> None:
    """Every round's parts: in the record, complete and non-negative, and printed as a table; what is
    measured on every round (building, moving, decoding, encoding, the next set) is above 0."""
    records = [json.loads(line) for line in
               (server_app(workdir / "workspace") / RECORD_FILE).read_text().splitlines() if line.strip()]
    for record in records:
        assert list(record["parts"]) == list(PARTS)
        assert all(seconds >= 0 for seconds in record["parts"].values())
        assert all(record["parts"][name] > 0 for name in ("tasks", "pulled", "down", "client_decode", "client_encode",
                                                           "up", "server_decode", "accept", "next_set"))
    table = stdout.partition(PARTS_TITLE)[2].partition(MEMORY_TITLE)[0]
    rows = _numbered_rows(table)
    assert [row[0] for row in rows] == ["0", "1"]
    for row, record in zip(rows, records):
        assert [float(value) for value in row[1:]] == [round(record["parts"][name], 2) for name in PARTS]


@pytest.fixture(scope="module")
def floor_benchmark(tiny_data, tmp_path_factory) -> tuple[str, Path]:
    """(stdout, work folder) of a 2-round `--floor` benchmark of the tiny job."""
    workdir = tmp_path_factory.mktemp("floor_benchmark")
    return _run_benchmark(tiny_data, workdir, "--floor"), workdir


def test_benchmark_reports_each_round_and_peak_memory(floor_benchmark):
    stdout, workdir = floor_benchmark
    report, _, memory = stdout.partition(MEMORY_TITLE)
    rows = _numbered_rows(report.partition(PARTS_TITLE)[0])
    assert [row[0] for row in rows] == ["0", "1"]
    memory_rows = [line for line in memory.splitlines() if line.strip()[:1].isdigit()]
    assert len(memory_rows) == 2
    for line in memory_rows:  # the server and every client, RSS now / peak in GiB
        assert "server " in line and all(f"{client} " in line for client in CLIENTS)
    for row in rows:
        wall, busy, aggregate, down, up = float(row[1]), float(row[2]), float(row[6]), float(row[7]), float(row[8])
        assert 0 < busy <= wall and aggregate < wall
        assert down > 0 and up > 0  # a tiny UNet pair is ~13 MB each way
    _check_parts(stdout, workdir)
    assert "peak total RSS of the process tree:" in stdout


def test_floor_benchmark_cuts_every_site_to_two_slices_a_split_and_reports_the_parts(tiny_data, floor_benchmark):
    stdout, workdir = floor_benchmark
    folder = workdir / "floor_datalists"
    assert f"({folder}); workflow.federated_evaluation=false" in stdout
    for client in CLIENTS:
        full = json.loads((tiny_data / "datalist_2D" / f"{client}.json").read_text())
        cut = json.loads((folder / f"{client}.json").read_text())
        assert {split: len(items) for split, items in cut.items()} == {"training": 2, "validation": 2, "testing": 2}
        assert all(cut[split] == full[split][:2] for split in cut)
    log = (workdir / "simulator.log").read_text()
    for client in CLIENTS:
        assert f"{client}: 2 training and 2 validation images" in log
    assert not (server_app(workdir / "workspace") / RESULTS_FILE).exists()  # no federated test evaluation
    _check_parts(stdout, workdir)
