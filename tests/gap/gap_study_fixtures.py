"""A tiny generalization-gap study, run once per test session and shared by the tests/gap modules.

Synthetic data (3 cases per site, 32x32 slices, plus the held-out UNSEEN site), FedSM and FedAvg in
the NVFlare simulator (2 rounds), the centralized and local baselines (2 rounds x 1 epoch), then the
gap report (with the FedSM run given a second time as a variant, to exercise that path cheaply, and
the routed-by-validation row), and a second report that takes every run twice, as two seeds.

The data and the FedSM run are the session's shared ones (`tiny_runs.shared_tiny_data`,
`shared_fedsm_run`: the tiny job with these settings), which the e2e tests read too.
"""

import dataclasses
import json
from pathlib import Path

from tiny_runs import CLIENTS, run_simulator, shared_fedsm_run, shared_tiny_data

from result_stat import baselines, gap_report
from result_stat.fedavg_job import derive_fedavg_job

REPO = Path(__file__).resolve().parents[2]
UNSEEN = "client_UNSEEN"
ROUNDS = 2
SIZE = 32

_CACHE: dict[str, "TinyStudy"] = {}


@dataclasses.dataclass(frozen=True)
class TinyStudy:
    root: Path
    data: Path
    fedsm_job: Path
    fedavg_job: Path
    fedsm_ws: Path
    fedavg_ws: Path
    centralized: Path
    local: Path
    report: Path
    seeds_report: Path

    @property
    def fedsm_app(self) -> Path:
        return self.fedsm_ws / "server" / "simulate_job" / "app_server"

    @property
    def fedavg_app(self) -> Path:
        return self.fedavg_ws / "server" / "simulate_job" / "app_server"


def _simulate(job: Path, workspace: Path) -> None:
    result = run_simulator(job, workspace, CLIENTS, timeout=400)
    assert result.returncode == 0, result.stdout[-3000:]


def tiny_study(tmp_path_factory) -> TinyStudy:
    """Build the study on first use (about a minute on 2 cores); later calls return the same one."""
    if "study" in _CACHE:
        return _CACHE["study"]
    root = tmp_path_factory.mktemp("gap_study")
    data = shared_tiny_data(tmp_path_factory)  # 3 cases per site and UNSEEN
    fedsm = shared_fedsm_run(tmp_path_factory)  # the FedSM job on it: 32x32, light selector, 2 rounds
    train_config = json.loads((fedsm.job / "app" / "config" / "config_train.json").read_text())
    server_config = json.loads((fedsm.job / "app" / "config" / "config_fed_server.json").read_text())
    assert (train_config["image_size"], train_config["selector"], server_config["num_rounds"]) == \
        (SIZE, "light", ROUNDS), "the shared FedSM run is not the study's"
    assert Path(train_config["datalist_json_path"]) == data / "datalist_2D"
    fedsm_job = fedsm.job
    fedavg_job = derive_fedavg_job(REPO / "jobs" / "fedavg_prostate", root / "fedavg_job",
                                   {"server.num_rounds": ROUNDS},
                                   train_config_from=fedsm_job / "app" / "config" / "config_train.json")
    study = TinyStudy(root, data, fedsm_job, fedavg_job, fedsm.workspace, root / "fedavg_ws",
                      root / "centralized", root / "local", root / "report", root / "seeds_report")
    _simulate(fedavg_job, study.fedavg_ws)
    baselines.main(["centralized", "--job", str(fedsm_job), "--output", str(study.centralized)])
    baselines.main(["local", "--job", str(fedsm_job), "--output", str(study.local)])
    gap_report.main(["--fedsm", str(study.fedsm_ws), "--fedsm-variant", f"copy={study.fedsm_ws}",
                     "--fedavg", str(study.fedavg_ws), "--centralized", str(study.centralized),
                     "--local", str(study.local), "--output", str(study.report),
                     "--thresholds", "0", "0.3", "0.5", "0.9", "--route_by_validation", "0"])
    gap_report.main(["--fedsm", *[str(study.fedsm_ws)] * 2, "--fedavg", *[str(study.fedavg_ws)] * 2,
                     "--centralized", *[str(study.centralized)] * 2, "--output", str(study.seeds_report),
                     "--thresholds", "0.9"])
    _CACHE["study"] = study
    return study


def read_csv(path: Path) -> list[dict[str, str]]:
    import csv

    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def read_results(study: TinyStudy) -> dict:
    return json.loads((study.report / "results.json").read_text())
