"""Resuming a run from its persisted state, and updates the server must reject, in the simulator."""

import pytest
import torch
from e2e_helpers import (
    add_fault_filter,
    client_app,
    make_job,
    server_app,
    tiny_overrides,
)
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tiny_runs import CLIENTS, run_simulator

METRICS = ("val_metric_global_model", "val_metric_person_model", "val_metric_select_model")


def _scalar(app_dir, tag):
    accumulator = EventAccumulator(str(app_dir))
    accumulator.Reload()
    return {e.step: e.value for e in accumulator.Scalars(tag)}


def test_restarted_run_continues_at_next_round_with_identical_models(tiny_data, tmp_path):
    first = run_simulator(make_job(tmp_path, "job2", tiny_overrides(tiny_data)), tmp_path / "ws2")
    assert first.returncode == 0
    state_file = server_app(tmp_path / "ws2") / "fedsm_state.pt"
    saved = torch.load(state_file, weights_only=True)
    job = make_job(tmp_path, "job3", tiny_overrides(tiny_data, **{"server.num_rounds": 3,
                                                                  "server.resume_from": str(state_file)}))
    resumed = run_simulator(job, tmp_path / "ws3")
    log = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0 and "at round 2" in log and "Round 0 of" not in log
    assert "Round 2 of 3 started" in log
    for client in CLIENTS:
        for tag in METRICS:
            before = _scalar(client_app(tmp_path / "ws2", client), tag)
            after = _scalar(client_app(tmp_path / "ws3", client), tag)
            # the first run's final validation and the resumed run's round-2 validation see the same models
            assert sorted(after) == [2, 3]
            assert after[2] == pytest.approx(before[2], abs=1e-6), (client, tag)
    final = torch.load(server_app(tmp_path / "ws3") / "fedsm_state.pt", weights_only=True)
    assert final["next_round"] == 3 and float(final["selector_moments"]["step"]) == 3.0
    assert float(saved["selector_moments"]["step"]) == 2.0


@pytest.mark.parametrize("fault, reason", [("nan", "NaN/Inf"), ("label", "is not the label of")])
def test_bad_update_is_excluded_and_the_others_aggregate(tiny_data, tmp_path, fault, reason):
    job = make_job(tmp_path, "job", tiny_overrides(tiny_data))
    add_fault_filter(job, "client_MSD", fault, from_round=1)
    result = run_simulator(job, tmp_path / "ws")
    log = result.stdout + result.stderr
    assert result.returncode == 0
    assert "update of client_MSD rejected in round 1" in log and reason in log
    assert "aggregated ['client_I2CVB', 'client_NCI_ISBI_3T']" in log
    state = torch.load(server_app(tmp_path / "ws") / "fedsm_state.pt", weights_only=True)
    assert state["next_round"] == 2
    assert all(torch.isfinite(t).all() for t in state["global"].values())
