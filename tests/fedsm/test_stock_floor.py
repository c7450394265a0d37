"""The stock-NVFlare floor tool: the job it exports moves as many parameters as a FedSM task, in
FedSM's 64 MiB pieces, and its round times come from FedAvg's round banners."""

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path("tools").resolve()))  # the tool imports its sibling `benchmark`
import stock_floor  # noqa: E402
from stock_floor_app.payload import PIECE_ELEMENTS, Payload  # noqa: E402

LOG = """\
2026-12-06 11:57:48,528 - INFO - 
--------------------------------------------------------------------------------
                                Round 0 started.                                
--------------------------------------------------------------------------------
2026-12-06 11:58:50,743 - INFO - Start persist model on server.
2026-12-06 11:58:54,088 - INFO - 
--------------------------------------------------------------------------------
                                Round 1 started.                                
--------------------------------------------------------------------------------
2026-12-06 11:59:05,120 - INFO - 
--------------------------------------------------------------------------------
                                Round 2 started.                                
--------------------------------------------------------------------------------
"""


def test_round_walls_run_from_one_round_banner_to_the_next_and_leave_the_last_round_out():
    assert stock_floor.round_walls(LOG) == {0: 65.56, 1: 11.032}


def test_the_payload_holds_the_fedsm_tasks_parameters_in_64_mib_pieces():
    parameters = stock_floor.fedsm_parameters(Path("jobs/fedsm_prostate"))
    assert parameters * 4 / 2**20 == pytest.approx(503.6, abs=0.05)  # MiB per client each way, as FedSM's floor moves
    assert sum(p.numel() for p in Payload(parameters).parameters()) == parameters
    payload = Payload(2 * PIECE_ELEMENTS + 5)
    assert [p.numel() for p in payload.parameters()] == [PIECE_ELEMENTS, PIECE_ELEMENTS, 5]
    assert all(p.dtype == torch.float32 for p in payload.parameters())


def test_the_exported_job_is_nvflares_stock_fedavg_carrying_the_payload(tmp_path):
    job = stock_floor.stock_job(1000, rounds=2, clients=3, destination=tmp_path)
    server = json.loads((job / "app" / "config" / "config_fed_server.json").read_text())
    text = json.dumps(server)
    assert "nvflare.app_common.workflows.fedavg.FedAvg" in text
    assert '"path": "stock_floor_app.payload.Payload", "args": {"parameters": 1000}' in text
    assert (job / "app" / "custom" / "stock_floor_app" / "echo_client.py").is_file()
