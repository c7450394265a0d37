"""The evaluate-only job (`FedSMEvaluationRecipe`) in the simulator: the sites of a finished run and a
site that joined later score the run's best checkpoints on their own test splits."""

import json

import pytest
from e2e_helpers import server_app
from tiny_runs import CLIENTS, run_simulator

from fedsm.recipe import FedSMEvaluationRecipe

NEW_SITE = "client_UNSEEN"  # in the shared tiny data, never trained on


def test_a_finished_run_is_scored_again_at_its_sites_and_at_a_new_one(finished_run, tmp_path):
    workspace, _ = finished_run
    run_app = server_app(workspace)
    clients = [*CLIENTS, NEW_SITE]
    job = FedSMEvaluationRecipe.of_run(run_app, clients=clients).write_job(tmp_path / "job")
    result = run_simulator(job, tmp_path / "ws", clients, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:]
    again = json.loads((server_app(tmp_path / "ws") / "test_results.json").read_text())
    after_training = json.loads((run_app / "test_results.json").read_text())
    assert again["unseen_sites"] == [NEW_SITE]
    unseen = again["sites"][NEW_SITE]
    assert unseen["images"] > 0 and unseen["selector_accuracy"] is None and unseen["super_dice"] is not None
    for site in CLIENTS:  # the same models on the same data: the table the training run ended with
        assert again["sites"][site] == pytest.approx(after_training["sites"][site], abs=1e-6), site
    assert again["pooled"] == pytest.approx(after_training["pooled"], abs=1e-6)  # pooled: the trained sites
