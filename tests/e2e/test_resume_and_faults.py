"""Resuming a run from its persisted state, and updates the server must reject, in the simulator.

The runs of the tests before the last go side by side (`runs`), one per job: the resume test and the
bad-update tests read the same run, whose bad updates come after the rounds the resume test compares.
The last test races a train timeout and has the machine to itself."""

import re

import pytest
import torch
from e2e_helpers import (
    add_fault_filter,
    make_job,
    server_app,
    tiny_overrides,
)
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tiny_runs import CLIENTS, finish, run_simulator, settle, start_simulator

from result_stat.workspace import TRACKING_FOLDER

METRICS = ("val_metric_global_model", "val_metric_person_model", "val_metric_select_model")
RESUMED_ROUNDS = 4  # the resumed job runs rounds 2 and 3 after `tiny_run`'s 0 and 1
# fault -> (the one round of the resumed job client_MSD sends it in, the reason the server logs)
BAD_UPDATES = {"nan": (2, "NaN/Inf"), "label": (3, "is not the label of")}
TRAIN_TIMEOUT = 35  # s; round 0 (which also starts the client workers) takes about 20 s on 2 cores


def _scalar(workspace, client, tag):
    """step -> value of one tag of `client`, as the server's TensorBoard receiver recorded it."""
    accumulator = EventAccumulator(str(server_app(workspace).parent / TRACKING_FOLDER / client))
    accumulator.Reload()
    return {e.step: e.value for e in accumulator.Scalars(tag)}


def _resumed_job_with_bad_updates(tmp_path, data, request):
    """The tiny job for `RESUMED_ROUNDS` rounds, resumed from the state `tiny_run` (2 rounds) ended with;
    client_MSD sends each fault of `BAD_UPDATES` in its round, after its validation of that round's models."""
    state_file = server_app(request.getfixturevalue("tiny_run").workspace) / "fedsm_state.pt"
    job = make_job(tmp_path, "job", tiny_overrides(data, **{"server.num_rounds": RESUMED_ROUNDS,
                                                            "server.resume_from": str(state_file)}))
    for fault, (round_number, _) in BAD_UPDATES.items():
        add_fault_filter(job, "client_MSD", fault, from_round=round_number, to_round=round_number)
    return job


def _unnormalized_site_job(tmp_path, data, request):
    job = make_job(tmp_path, "job", tiny_overrides(data))
    add_fault_filter(job, "client_NCI_ISBI_3T", "scale", from_round=1)
    return job


def _disagreeing_min_clients_job(tmp_path, data, request):
    return make_job(tmp_path, "job", tiny_overrides(data, **{"workflow.min_clients": 3, "meta.min_clients": 2}))


# each test (as pytest names it) -> (the job it runs, made in a folder from the data; its clients; the run's
# timeout in s); tests of the same job read one run of it. The server stops the min_clients job at its
# start, so one client does.
RESUMED = (_resumed_job_with_bad_updates, CLIENTS, 300)
JOBS = {
    "test_restarted_run_continues_at_next_round_with_identical_models": RESUMED,
    **{f"test_bad_update_is_excluded_and_the_others_aggregate[{fault}]": RESUMED for fault in BAD_UPDATES},
    "test_min_clients_of_the_workflow_and_meta_must_agree": (_disagreeing_min_clients_job, CLIENTS[:1], 180),
    "test_a_site_sending_unnormalized_updates_does_not_poison_the_others": (_unnormalized_site_job, CLIENTS, 300),
}


@pytest.fixture(scope="module")
def runs(request, tiny_data, tmp_path_factory) -> dict:
    """test name -> (workspace, future of the run) for the selected tests of `JOBS`: the run of each job
    starts once (`tiny_runs.start_simulator`, in the tests' order), all together; each test waits for
    its own. A job that cannot be made is its tests' error (their entries hold the exception)."""
    by_job, started = {}, {}
    for item in request.session.items:
        if item.module is request.module and item.name in JOBS:
            make, clients, timeout = JOBS[item.name]
            if make not in by_job:
                tmp = tmp_path_factory.mktemp("resume_and_faults")
                try:
                    job = make(tmp, tiny_data, request)
                    by_job[make] = (tmp / "ws", start_simulator(job, tmp / "ws", clients, timeout))
                except Exception as error:  # noqa: BLE001 - reported by the tests it belongs to
                    by_job[make] = error
            started[item.name] = by_job[make]
    yield started
    finish([entry[1] for entry in by_job.values() if isinstance(entry, tuple)])


def _run_of(runs: dict, request):
    """(workspace, result) of the run of the test asking, once it is over."""
    entry = runs[request.node.name]
    if isinstance(entry, Exception):
        raise entry
    workspace, future = entry
    return workspace, future.result()


def test_restarted_run_continues_at_next_round_with_identical_models(runs, request, tiny_run):
    # the first run: the 2-round tiny job, `tiny_run` (shared with other tests; only read here); the
    # resumed one: `_resumed_job_with_bad_updates`
    first_workspace = tiny_run.workspace
    saved = torch.load(server_app(first_workspace) / "fedsm_state.pt", weights_only=True)
    workspace, resumed = _run_of(runs, request)
    log = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0 and "at round 2" in log and "Round 0 of" not in log
    assert f"Round 2 of {RESUMED_ROUNDS} started" in log
    for client in CLIENTS:
        for tag in METRICS:
            before = _scalar(first_workspace, client, tag)
            after = _scalar(workspace, client, tag)
            # the first run's final validation and the resumed run's round-2 validation see the same models
            assert sorted(after) == list(range(2, RESUMED_ROUNDS + 1))
            assert after[2] == pytest.approx(before[2], abs=1e-6), (client, tag)
    final = torch.load(server_app(workspace) / "fedsm_state.pt", weights_only=True)
    assert final["next_round"] == RESUMED_ROUNDS and float(final["selector_moments"]["step"]) == RESUMED_ROUNDS
    assert float(saved["selector_moments"]["step"]) == 2.0


@pytest.mark.parametrize("fault", list(BAD_UPDATES))
def test_bad_update_is_excluded_and_the_others_aggregate(runs, request, fault):
    workspace, result = _run_of(runs, request)  # the job: `_resumed_job_with_bad_updates`
    round_number, reason = BAD_UPDATES[fault]
    log = result.stdout + result.stderr
    assert result.returncode == 0
    rejection = f"update of client_MSD rejected in round {round_number}: "
    assert any(rejection in line and reason in line for line in log.splitlines()), log[-3000:]
    assert "aggregated ['client_I2CVB', 'client_NCI_ISBI_3T']" in \
        log.split(f"Round {round_number} finished")[1].splitlines()[0]
    state = torch.load(server_app(workspace) / "fedsm_state.pt", weights_only=True)
    assert state["next_round"] == RESUMED_ROUNDS
    assert all(torch.isfinite(t).all() for t in state["global"].values())


def test_a_site_sending_unnormalized_updates_does_not_poison_the_others(runs, request, tiny_run):
    """client_NCI_ISBI_3T sends updates 1e6 times too large from round 1 on; its round-0 update is an
    honest one, so the run matches `tiny_run` (the same job, all honest) up to round 1's aggregation,
    where the bounds leave that site out. The honest sites' validation of the final models must then
    stay within the tolerance below of `tiny_run`'s, where all three sites aggregated round 1: 0.02 of
    Dice (measured: 0.004-0.005) and one third of selector accuracy (one site's share of the labels;
    the selector's accuracy swings by design). Aggregated, the poisoned updates would put values near
    1e4 into the global model."""
    workspace, result = _run_of(runs, request)  # the job: `_unnormalized_site_job`
    log = result.stdout + result.stderr
    assert result.returncode == 0
    assert "update of client_NCI_ISBI_3T held until the round closes" in log
    assert re.search(r"update of client_NCI_ISBI_3T rejected in round 1: \S+ \S+ norm \S+ is over 10 x "
                     r"(the round's lower median|the run's scale)", log)
    assert "aggregated ['client_I2CVB', 'client_MSD']" in log
    state = torch.load(server_app(workspace) / "fedsm_state.pt", weights_only=True)
    assert max(float(t.abs().max()) for t in state["global"].values()) < 100
    for client in ("client_I2CVB", "client_MSD"):
        for tag, tolerance in (("val_metric_global_model", 0.02), ("val_metric_select_model", 0.34)):
            clean, poisoned = _scalar(tiny_run.workspace, client, tag), _scalar(workspace, client, tag)
            assert poisoned[1] == pytest.approx(clean[1], abs=1e-6)  # the same models until round 1
            assert poisoned[2] == pytest.approx(clean[2], abs=tolerance), (client, tag)


def test_min_clients_of_the_workflow_and_meta_must_agree(runs, request):
    _, result = _run_of(runs, request)  # the job: `_disagreeing_min_clients_job`
    assert "min_clients is 3 in config_fed_server.json but 2 in meta.json" in result.stdout
    assert "Round 0 of" not in result.stdout


def test_a_client_that_never_answers_costs_one_timeout_not_the_run(tiny_data, tmp_path):
    """client_MSD stays connected but answers round 1 only once the server has given up on it (its log
    says so; at most 120 s), a late answer; with train_timeout 35 s the round ends at the timeout, the
    others aggregate, and client_MSD's personalized model is unchanged (the timeout counts from the
    task's creation, so round 0 leaves the simulator time to start the clients)."""
    settle()  # round 0 must beat the train timeout: no other run may share the machine
    job = make_job(tmp_path, "job", tiny_overrides(tiny_data, **{"workflow.train_timeout": TRAIN_TIMEOUT,
                                                                 "workflow.validate_final_models": False}))
    add_fault_filter(job, "client_MSD", "stall", from_round=1, seconds=120,
                     release_file=str(tmp_path / "ws" / "server" / "log.txt"),  # the simulator server's log
                     release_text="no result from client_MSD for task 'train' in round 1")
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
