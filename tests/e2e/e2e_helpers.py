"""Helpers of the end-to-end tests: tiny FedSM jobs, where the simulator puts their outputs, fault filters."""

import json
import shutil
from pathlib import Path

from tiny_runs import tiny_fedsm_overrides

from fedsm.job_config import derive_job

REPO = Path(__file__).resolve().parents[2]


def tiny_overrides(data: Path, **extra) -> dict:
    """The tiny job (32x32, light selector, 2 rounds) on `data`: without `extra`, the job of `tiny_run`."""
    return tiny_fedsm_overrides(data, **extra)


def make_job(tmp_path: Path, name: str, overrides: dict) -> Path:
    return derive_job(REPO / "jobs" / "fedsm_prostate", tmp_path / name, overrides)


def server_app(workspace: Path) -> Path:
    return workspace / "server" / "simulate_job" / "app_server"


def client_app(workspace: Path, client: str) -> Path:
    return workspace / client / "simulate_job" / f"app_{client}"


def add_fault_filter(job: Path, client: str, fault: str, from_round: int = 0, to_round: int | None = None,
                     seconds: float = 0.0, release_file: str = "", release_text: str = "") -> None:
    """Ship `fault_injection.CorruptUpdate` with the job and add it to the clients' result filters of
    `train`, after those added before."""
    shutil.copy(Path(__file__).with_name("fault_injection.py"), job / "app" / "custom" / "fault_injection.py")
    config_file = job / "app" / "config" / "config_fed_client.json"
    config = json.loads(config_file.read_text())
    chains = config.setdefault("task_result_filters", [])
    if not any(chain["tasks"] == ["train"] for chain in chains):
        chains.append({"tasks": ["train"], "filters": []})
    next(chain for chain in chains if chain["tasks"] == ["train"])["filters"].append(
        {"path": "fault_injection.CorruptUpdate", "args": {"client": client, "fault": fault, "from_round": from_round,
                                                                "to_round": to_round, "seconds": seconds,
                                                                "release_file": release_file,
                                                                "release_text": release_text}})
    config_file.write_text(json.dumps(config, indent=2))
