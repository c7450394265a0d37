"""The FedSM job, end to end in the NVFlare simulator on tiny synthetic data.

`finished_run` (tests/e2e/conftest.py) is the tiny job as it ships, run once for the session;
`server_adam_run_with_mlflow` the module's one variant of it."""

import importlib.util
import json
import subprocess
import sys

import pytest
import torch
from e2e_helpers import REPO, client_app, make_job, server_app, tiny_overrides
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tiny_runs import CLIENTS, TinyRun, run_simulator

from result_stat import prostate_2d_test_only as test_only

TAGS = {"val_metric_global_model", "val_metric_person_model", "val_metric_select_model", "train_loss",
        "train_loss_personalized", "train_loss_selector"}


def _scalars(event_dir):
    accumulator = EventAccumulator(str(event_dir))
    accumulator.Reload()
    return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}


@pytest.fixture(scope="module")
def server_adam_run_with_mlflow(tiny_data, tmp_path_factory) -> TinyRun:
    """The tiny job with `train.selector_training` server_adam and, where mlflow is installed, the
    MLflow option of docs/deployment.md: MLflowReceiver added to the server's components, with no
    tracking_uri. Neither changes what the other tests of it read, so one run serves both."""
    root = tmp_path_factory.mktemp("server_adam_mlflow")
    job = make_job(root, "job", tiny_overrides(tiny_data, **{"train.selector_training": "server_adam"}))
    if importlib.util.find_spec("mlflow"):
        config_file = job / "app" / "config" / "config_fed_server.json"
        config = json.loads(config_file.read_text())
        config["components"].append({"id": "mlflow_receiver",
                                     "path": "nvflare.app_opt.tracking.mlflow.mlflow_receiver.MLflowReceiver",
                                     "args": {"kw_args": {"experiment_name": "fedsm_prostate"}}})
        config_file.write_text(json.dumps(config, indent=2))
    result = run_simulator(job, root / "ws")
    assert result.returncode == 0, result.stdout[-3000:]
    return TinyRun(job, root / "ws", result.stdout + result.stderr)


def tracked(workspace, client):
    """The folder where the server's TensorBoard receiver keeps the curves `client` sent."""
    return server_app(workspace).parent / "tb_events" / client


def test_federated_test_evaluation_equals_the_central_test_only_script(finished_run):
    """Each site scored the best models on its own test split; the server's table equals the one the
    central script computes on the same models and data, and each site drew its own picture."""
    workspace, output = finished_run
    federated = json.loads((server_app(workspace) / "test_results.json").read_text())
    central = test_only.main(["--workspace", str(workspace), "--select_threshold", "0.9"])
    assert sorted(federated["sites"]) == sorted(central["sites"]) == sorted(CLIENTS)
    for site, row in [*central["sites"].items(), ("pooled", central["pooled"])]:
        mine = federated["pooled"] if site == "pooled" else federated["sites"][site]
        assert mine["images"] == row["images"] > 0
        for key in ("super_dice", "global_dice", "selector_accuracy", "personalized_share"):
            assert (mine[key] is None) == (row[key] is None) and (row[key] is None or mine[key] ==
                                                                  pytest.approx(row[key], abs=1e-6)), (site, key)
    assert "federated test evaluation" in output and federated["routing"] in output
    for client in CLIENTS:
        assert (client_app(workspace, client) / "test_slices.png").stat().st_size > 1000


def test_best_checkpoints_exist_for_every_model_and_load_safely(finished_run):
    workspace, _ = finished_run
    app = server_app(workspace)
    names = ["best_global_model.pt", "best_selector_model.pt"] + [f"best_personalized_model_{c}.pt" for c in CLIENTS]
    for name in names:
        content = torch.load(app / name, weights_only=True)
        assert set(content) == {"weights", "metric", "round"}, name
        assert 0 <= content["round"] <= 2


def test_every_clients_curves_reach_the_server_and_end_on_the_final_models(finished_run):
    workspace, _ = finished_run
    for client in CLIENTS:
        scalars = _scalars(tracked(workspace, client))
        assert TAGS <= set(scalars), client
        # rounds 0 and 1 validate the received models, step 2 the final models
        assert [step for step, _ in scalars["val_metric_global_model"]] == [0, 1, 2]
        assert [step for step, _ in scalars["train_loss"]] == [0, 1]
        assert (client_app(workspace, client) / "personalized_best.pt").is_file()
        # written once: a site keeps no event files of its own unless it sets local_tensorboard
        assert not list(client_app(workspace, client).glob("events.out.tfevents.*")), client


def test_final_state_has_distinct_personalized_models_and_float32_arrays(finished_run):
    workspace, log = finished_run
    state = torch.load(server_app(workspace) / "fedsm_state.pt", weights_only=True)
    assert state["next_round"] == 2
    personalized = [state["personalized"][c] for c in CLIENTS]
    name = next(iter(personalized[0]))
    for i in range(3):
        for j in range(i + 1, 3):
            assert not torch.equal(personalized[i][name], personalized[j][name])
    for part in ("global", "selector", "selector_moments"):
        assert all(t.dtype == torch.float32 for t in state[part].values()), part
    assert float(state["selector_moments"]["step"]) == 2.0
    assert "Round 1 finished" in log and "rejected" not in log


def test_each_client_worker_runs_under_its_own_name(finished_run):
    workspace, log = finished_run
    assert "thread sends its worker its own build context" in log
    for client in CLIENTS:
        worker_log = (workspace / client / "log.txt").read_text()
        cells = {other for other in CLIENTS if f"{other}.simulate_job: created" in worker_log}
        assert cells == {client}, (client, cells)


def test_test_only_evaluation_prints_dice_table(finished_run):
    workspace, _ = finished_run
    result = subprocess.run([sys.executable, "-m", "result_stat.prostate_2d_test_only", "--models_dir",
                             f"{server_app(workspace)}/"], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.strip().splitlines()
    assert lines[-1].startswith("Test Dice: ") and 0.0 <= float(lines[-1].split()[-1]) <= 1.0
    for client in CLIENTS:
        assert any(client in line for line in lines), client


@pytest.mark.parametrize("selector_training", ["server_adam", "client_adam_on_server"])
def test_gradient_upload_selector_training_runs(tiny_run, request, selector_training):
    shipped = json.loads((tiny_run.job / "app" / "config" / "config_train.json").read_text())["selector_training"]
    # the job's own mode: `tiny_run` is this very job, already run
    run = tiny_run if selector_training == shipped else request.getfixturevalue("server_adam_run_with_mlflow")
    assert json.loads((run.job / "app" / "config" / "config_train.json").read_text())["selector_training"] == \
        selector_training
    assert "rejected" not in run.output
    state = torch.load(server_app(run.workspace) / "fedsm_state.pt", weights_only=True)
    assert float(state["selector_moments"]["step"]) == 2.0
    assert all(torch.isfinite(t).all() for t in state["selector"].values())


def test_mlflow_receiver_records_every_sites_curves_in_the_servers_job_workspace(server_adam_run_with_mlflow):
    """The MLflow option of docs/deployment.md (`server_adam_run_with_mlflow`) keeps a SQLite store in the
    server's job workspace; each site is a run there."""
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    workspace = server_adam_run_with_mlflow.workspace
    store = server_app(workspace).parent / "mlflow.db"
    assert store.is_file()
    mlflow = MlflowClient(tracking_uri=f"sqlite:///{store}")
    experiment = mlflow.get_experiment_by_name("fedsm_prostate")
    runs = mlflow.search_runs([experiment.experiment_id])
    for client in CLIENTS:
        (run,) = [run for run in runs if run.info.run_name.startswith(f"{client}-")]
        assert TAGS <= set(run.data.metrics), client
        validated = _scalars(tracked(workspace, client))["val_metric_global_model"]
        history = sorted((m.step, m.value) for m in mlflow.get_metric_history(run.info.run_id,
                                                                              "val_metric_global_model"))
        # the same points as the TensorBoard receiver's (float32), the final models' validation included
        assert [step for step, _ in history] == [step for step, _ in validated] == [0, 1, 2], client
        assert [value for _, value in history] == pytest.approx([value for _, value in validated], rel=1e-6)
