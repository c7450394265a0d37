"""The baselines end to end on tiny data: FedAvg in the NVFlare simulator, centralized and local training."""

import json

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from fedsm.config import TrainConfig
from fedsm.flare.persistor import initial_model_set
from fedsm.io.checkpoint import load_checkpoint
from fedsm.models.networks import build_unet
from fedsm.models.weights import get_weights
from gap_study_fixtures import CLIENTS, REPO, ROUNDS, tiny_study
from result_stat.fedavg_job import baselines_source
from result_stat.workspace import TRACKING_FOLDER

SIMULATOR_GUARD = "fedsm.flare.simulator_guard.SimulatorClientStartGuard"


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    return tiny_study(tmp_path_factory)


def test_fedavg_job_is_stock_nvflare_on_the_server_with_a_thin_client_executor():
    config = json.loads((REPO / "jobs" / "fedavg_prostate" / "app" / "config" / "config_fed_server.json").read_text())
    paths = [c["path"] for c in config["components"]] + [w["path"] for w in config["workflows"]]
    # besides NVFlare's own components, only the guard against the simulator's start-up race
    assert sorted(path for path in paths if not path.startswith("nvflare.")) == [SIMULATOR_GUARD], paths
    client = json.loads((REPO / "jobs" / "fedavg_prostate" / "app" / "config" / "config_fed_client.json").read_text())
    assert client["executors"][0]["executor"]["path"] == "fedsm_baselines.fedavg_executor.UNetFedAvgExecutor"


def test_fedavg_run_saves_final_and_best_unets_and_validates_both(study):
    for name in ("FL_global_model.pt", "best_FL_global_model.pt"):
        state = torch.load(study.fedavg_app / name, map_location="cpu", weights_only=True)["model"]
        build_unet().load_state_dict(state, strict=True)
    cross_val = json.loads((study.fedavg_app.parent / "cross_site_val" / "cross_val_results.json").read_text())
    assert sorted(cross_val) == CLIENTS
    for client in CLIENTS:
        assert set(cross_val[client]) == {"SRV_FL_global_model.pt", "SRV_best_FL_global_model.pt"}
        assert all(0 <= m["val_dice"] <= 1 and m["num_val"] > 0 for m in cross_val[client].values())
        # the client's curves, as the server's TensorBoard receiver recorded them
        accumulator = EventAccumulator(str(study.fedavg_ws / "server" / "simulate_job" / TRACKING_FOLDER / client))
        accumulator.Reload()
        assert [e.step for e in accumulator.Scalars("val_metric_global_model")] == list(range(ROUNDS))
    log = (study.root / "fedavg_ws.log").read_text()
    assert f"Round {ROUNDS - 1} finished" in log and "new best validation metric at round 1" in log


def test_fedavg_job_uses_the_fedsm_training_config_and_ships_its_code(study):
    fedsm_train = json.loads((study.fedsm_job / "app" / "config" / "config_train.json").read_text())
    fedavg_train = json.loads((study.fedavg_job / "app" / "config" / "config_train.json").read_text())
    assert fedavg_train == fedsm_train
    server = json.loads((study.fedavg_job / "app" / "config" / "config_fed_server.json").read_text())
    assert server["num_rounds"] == ROUNDS and server["seed"] == fedsm_train["seed"]
    custom = study.fedavg_job / "app" / "custom"
    assert (custom / "fedsm" / "training.py").is_file()
    assert (custom / "fedsm_baselines" / "fedavg_executor.py").is_file()


def test_every_baseline_starts_from_the_fedsm_initial_global_model(monkeypatch):
    monkeypatch.syspath_prepend(str(baselines_source().parent))
    from fedsm_baselines.fedavg_executor import seeded_unet

    config = TrainConfig.from_dict({"dataset_base_dir": "x", "datalist_json_path": "y", "selector": "light", "seed": 3})
    fedsm_initial = initial_model_set(config, CLIENTS).global_model
    fedavg_initial = get_weights(seeded_unet(3))
    torch.manual_seed(3)  # what result_stat.baselines.train_baseline does before building its UNet
    baseline_initial = get_weights(build_unet())
    for name, array in fedsm_initial.items():
        np.testing.assert_array_equal(fedavg_initial[name], array)
        np.testing.assert_array_equal(baseline_initial[name], array)


@pytest.mark.parametrize("kind", ["centralized", "local"])
def test_centralized_and_local_keep_the_best_validated_model_within_the_budget(study, kind):
    folders = [study.centralized] if kind == "centralized" else [study.local / client for client in CLIENTS]
    for folder in folders:
        results = json.loads((folder / "results.json").read_text())
        assert results["num_rounds"] == ROUNDS and results["epochs"] == ROUNDS * results["local_epochs"]
        assert results["seed"] == results["config"]["seed"] == 0
        history = results["history"]
        assert [row["round"] for row in history] == list(range(ROUNDS + 1))
        dices = [row["val_dice"] for row in history]
        best_round = int(np.argmax(dices))  # first maximum, as the FedSM best-model tracking
        assert results["best_round"] == best_round and results["best_val_dice"] == dices[best_round]
        best = load_checkpoint(folder / "best_model.pt")
        assert best["round"] == best_round and best["metric"] == pytest.approx(dices[best_round])
        assert load_checkpoint(folder / "last_model.pt")["round"] == ROUNDS
        build_unet().load_state_dict({k: torch.from_numpy(v) for k, v in best["weights"].items()}, strict=True)
    if kind == "centralized":
        pooled = json.loads((study.data / "datalist_2D" / "client_All.json").read_text())
        assert results["train_images"] == len(pooled["training"])
        assert results["val_images"] == len(pooled["validation"])
