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


def test_a_client_that_never_answers_costs_one_timeout_not_the_run(tiny_data, tmp_path):
    """client_MSD stays connected but answers round 1 only after 60 s; with train_timeout 45 s the round
    ends at the timeout, the others aggregate, and client_MSD's personalized model is unchanged (the
    timeout counts from the task's creation, so round 0 leaves the simulator time to start the clients)."""
    job = make_job(tmp_path, "job", tiny_overrides(tiny_data, **{"workflow.train_timeout": 45,
                                                                 "workflow.validate_final_models": False}))
    add_fault_filter(job, "client_MSD", "stall", from_round=1, seconds=60)
    result = run_simulator(job, tmp_path / "ws")
    log = result.stdout
    assert result.returncode == 0
    assert "no result from client_MSD for task 'train' in round 1" in log
    assert "aggregated ['client_I2CVB', 'client_NCI_ISBI_3T']" in log.split("Round 1 finished")[1].splitlines()[0]
    app = server_app(tmp_path / "ws")
    before, after = (torch.load(app / f"fedsm_state.r0000{n}.pt", weights_only=True) for n in (1, 2))
    for client in CLIENTS:
        same = all(torch.equal(after["personalized"][client][name], tensor)
                   for name, tensor in before["personalized"][client].items())
        assert same == (client == "client_MSD"), client


def test_min_clients_of_the_workflow_and_meta_must_agree(tiny_data, tmp_path):
    job = make_job(tmp_path, "job", tiny_overrides(tiny_data, **{"workflow.min_clients": 3, "meta.min_clients": 2}))
    result = run_simulator(job, tmp_path / "ws", timeout=180)
    assert "min_clients is 3 in config_fed_server.json but 2 in meta.json" in result.stdout
    assert "Round 0 of" not in result.stdout
