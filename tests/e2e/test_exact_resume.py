"""Exact resume in the simulator: 2 rounds in one run end with the same models as 1 round, then a new
job resumed from it (`resume_from` + the same `client_state_dir`) for the round left.

The uninterrupted run goes alongside the other two (`tiny_runs.start_simulator`): nothing here
depends on timing, as the clients run one after another and every round is seeded."""

import torch
from e2e_helpers import client_app, make_job, server_app, tiny_overrides
from tiny_runs import CLIENTS, finish, start_simulator

from fedsm.io.checkpoint import best_checkpoint_name
from fedsm.io.client_state import CLIENT_STATE_FILENAME
from result_stat import prostate_2d_test_only

ROUNDS, STOP_AFTER = 2, 1
TOLERANCE = 1e-6


def _start(tmp_path, name, data, **overrides):
    """client_adam: the mode where clients hold an Adam for the selector too. Clients one after another:
    updates then reach the streamed float32 sums in one order in every run; with parallel tasks their
    arrival order changes the sums' last bit, and Adam turns that noise into lr-sized steps of the
    parameters whose true gradient is zero (conv biases before instance or group norm).
    Returns the workspace and the future of the run (`_finished` waits for it)."""
    job = make_job(tmp_path, f"job_{name}", tiny_overrides(data, **{
        "train.selector_training": "client_adam", "workflow.parallel_tasks": False, **overrides}))
    return tmp_path / f"ws_{name}", start_simulator(job, tmp_path / f"ws_{name}")


def _finished(started):
    workspace, run = started
    result = run.result()
    assert result.returncode == 0, result.stdout[-3000:]
    return workspace


def _flat(state):
    tensors = {f"global/{k}": v for k, v in state["global"].items()}
    tensors |= {f"selector/{k}": v for k, v in state["selector"].items()}
    tensors |= {f"selector_moments/{k}": v for k, v in state["selector_moments"].items()}
    for client, weights in state["personalized"].items():
        tensors |= {f"personalized/{client}/{k}": v for k, v in weights.items()}
    return tensors


def test_resumed_job_ends_with_the_models_of_an_uninterrupted_run(tiny_data, tmp_path):
    states = tmp_path / "client_states"
    uninterrupted = _start(tmp_path, "whole", tiny_data, **{"server.num_rounds": ROUNDS})
    try:
        first = _finished(_start(tmp_path, "first", tiny_data, **{"server.num_rounds": STOP_AFTER,
                                                                  "train.client_state_dir": str(states)}))
        for client in CLIENTS:  # one subfolder per client, though all share the configured path
            assert torch.load(states / client / CLIENT_STATE_FILENAME, weights_only=True)["round"] == STOP_AFTER - 1
        rest = _finished(_start(tmp_path, "rest", tiny_data, **{
            "server.num_rounds": ROUNDS, "train.client_state_dir": str(states),
            "server.resume_from": str(server_app(first) / "fedsm_state.pt")}))
        whole = _finished(uninterrupted)
    finally:
        finish([uninterrupted[1]])
    for client in CLIENTS:
        log = (rest / client / "log.txt").read_text()
        assert f"restored client state of round {STOP_AFTER - 1} from {states / client}" in log, client
        assert (client_app(rest, client) / "personalized_best.pt").is_file()

    expected = torch.load(server_app(whole) / "fedsm_state.pt", weights_only=True)
    resumed = torch.load(server_app(rest) / "fedsm_state.pt", weights_only=True)
    assert resumed["next_round"] == expected["next_round"] == ROUNDS
    expected, resumed = _flat(expected), _flat(resumed)
    assert sorted(resumed) == sorted(expected)
    assert any(k.startswith("selector_moments/exp_avg") for k in expected)
    worst = {k: (resumed[k].double() - expected[k].double()).abs().max().item() for k in expected}
    assert max(worst.values()) <= TOLERANCE, sorted(worst.items(), key=lambda item: -item[1])[:5]

    app = server_app(rest)  # the best checkpoints of the first job were carried over (or beaten)
    names = [best_checkpoint_name("global"), best_checkpoint_name("selector")] + \
        [best_checkpoint_name("personalized", client) for client in CLIENTS]
    assert all((app / name).is_file() for name in names)
    results = prostate_2d_test_only.main(["--workspace", str(rest)])
    assert results
