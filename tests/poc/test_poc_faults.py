"""A real federation in NVFlare POC mode: the recipe submitted through ProdEnv with the project admin's
startup kit (a POC workspace is a provisioned project on one machine), then its faults: a client site
crashes in the middle of a round, the server is killed between rounds. One federation (server + 3
clients) serves the whole module."""

import json
import os
import re
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from fedsm.config import TrainConfig
from fedsm.flare.persistor import initial_model_set
from fedsm.ops.heap import huge_page_heap_env
from poc_helpers import (ADMIN, CLIENTS, PocError, PocFederation, kill, listening_addresses, scalars, site_processes,
                         tiny_job, wait_for_job, wait_for_line)
from recipe_script import as_settings, run_script
from result_stat import plot_tensorboard_events as plot
from tiny_runs import tiny_fedsm_overrides
from result_stat.workspace import TRACKING_FOLDER

pytestmark = pytest.mark.poc
# seconds a client may take per task: a crashed client holds each round up this long. The live clients
# must answer round 0 within it, counted from the task's creation (their job processes have started by
# then): validation and training of the tiny job, seconds with one torch thread each (`tiny_job`).
TRAIN_TIMEOUT = 25


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    with PocFederation(tmp_path_factory.mktemp("poc_faults")) as federation:
        federation.prepare()
        federation.start()
        yield federation


def test_every_listener_of_the_federation_binds_loopback(federation):
    addresses = listening_addresses(federation.processes())
    assert f"127.0.0.1:{federation.port}" in addresses
    assert all(address.startswith(("127.", "0000:0000:0000:0000:0000:0000:0000:0001")) for address in addresses), \
        addresses


@pytest.mark.skipif("GLIBC_TUNABLES" in os.environ, reason="glibc cuts GLIBC_TUNABLES in place at start: "
                    "/proc/PID/environ then shows only the first of several tunables")
def test_every_process_of_the_federation_starts_with_the_huge_page_heap(federation):
    """NVFlare's start scripts pass `huge_page_heap_env` on to the server, the clients and their jobs."""
    tunables = {}
    for pid in federation.processes():
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:  # ended meanwhile
            continue
        tunables[pid] = [entry.decode() for entry in environ if entry.startswith(b"GLIBC_TUNABLES=")]
    assert len(tunables) >= 4  # the server and three clients at least
    expected = "GLIBC_TUNABLES=" + huge_page_heap_env({})["GLIBC_TUNABLES"]
    assert all(values == [expected] for values in tunables.values()), tunables


def test_the_recipe_runs_in_prod_env_through_the_admins_startup_kit(federation, poc_data):
    overrides = tiny_fedsm_overrides(poc_data, **{"server.num_rounds": 1, "train.torch_threads": 1})
    result = run_script(["--env", "prod", "--startup-kit", str(federation.site_dir(ADMIN)), "--username", ADMIN,
                         *as_settings(overrides)], timeout=600, env=federation.env)
    assert result.returncode == 0, result.stdout[-3000:]
    finished = re.search(r"finished(?: with status (\S+))?; results in (\S+)", result.stdout)
    assert finished and finished.group(1) in (None, "FINISHED:COMPLETED"), result.stdout[-3000:]
    download = Path(finished.group(2)) / "workspace"
    assert (download / "app_server" / "fedsm_state.pt").is_file()
    assert sorted(path.name for path in (download / TRACKING_FOLDER).iterdir()) == sorted(CLIENTS)
    # the download alone holds the test table the sites computed, and the plot script draws the curves
    tested = json.loads((download / "app_server" / "test_results.json").read_text())
    assert sorted(tested["sites"]) == sorted(CLIENTS) and tested["pooled"]["images"] > 0
    png = plot.main(["--workspace", str(download.parent), "--output", str(download.parent / "curves.png")])
    assert png.read_bytes().startswith(b"\x89PNG")
    assert "FedSM finished." in (download / "log.txt").read_text()
    assert "patched NVFlare" not in (download / "log.txt").read_text()  # the simulator guard stays idle


def test_client_site_crash_mid_round_the_others_finish_the_run(federation, poc_data, tmp_path):
    job = tiny_job(tmp_path / "job", poc_data, **{"workflow.train_timeout": TRAIN_TIMEOUT,
                                                   "workflow.min_clients": 2, "meta.min_clients": 2,
                                                   "workflow.validate_final_models": False})
    job_id = federation.submit(job)
    # client_MSD has validated the round-0 models and is training: kill its parent and job processes
    wait_for_line(federation.client_job_log("client_MSD", job_id), "round 0 validation", timeout=180)
    crashed = site_processes(federation, "client_MSD")
    kill(crashed)
    status = wait_for_job(federation, job_id, timeout=300)
    # NVFlare marks the job ABNORMAL because the crashed site never reports its end; all rounds ran
    assert status.startswith("FINISHED"), status
    results = federation.download(job_id, tmp_path / "download") / "workspace"
    log = (results / "log.txt").read_text()  # the server's job log
    for round_number in (0, 1):
        assert f"no result from client_MSD for task 'train' in round {round_number}" in log
        assert f"Round {round_number} finished" in log
        assert "aggregated ['client_I2CVB', 'client_NCI_ISBI_3T']" in log.split(f"Round {round_number} finished")[1]
    assert "FedSM finished." in log
    # the site's supervisor restarted its client process; NVFlare does not let it rejoin the running job
    restarted = [pid for pid in site_processes(federation, "client_MSD") if pid not in crashed]
    assert restarted and "round 1" not in federation.client_job_log("client_MSD", job_id).read_text()

    state = torch.load(results / "app_server" / "fedsm_state.pt", weights_only=True)
    assert state["next_round"] == 2
    initial = initial_model_set(TrainConfig.from_file(job / "app" / "config" / "config_train.json"), list(CLIENTS))
    for client in CLIENTS:
        same = all(np.array_equal(state["personalized"][client][name].numpy(), weights)
                   for name, weights in initial.personalized[client].items())
        assert same == (client == "client_MSD"), client  # the crashed client's model is kept unchanged
    # each client's curves, recorded by the server into the job: points only for the rounds it took part in
    for client in CLIENTS:
        tracked = results / TRACKING_FOLDER / client
        validated, trained = scalars(tracked, "val_metric_global_model"), scalars(tracked, "train_loss")
        if client == "client_MSD":
            assert sorted(validated) == [0] and trained == {}
        else:
            assert sorted(validated) == [0, 1] and sorted(trained) == [0, 1]


def test_server_killed_between_rounds_a_resumed_job_continues_from_the_saved_round(federation, poc_data, tmp_path):
    job_id = federation.submit(tiny_job(tmp_path / "job", poc_data))
    wait_for_line(federation.server_job_log(job_id), "saved fedsm_state.pt (next round 1)", timeout=180)
    kill(site_processes(federation, "server"))  # the server and its job process; its supervisor restarts it
    state_file = federation.site_dir("server") / job_id / "app_server" / "fedsm_state.pt"
    saved_bytes = state_file.read_bytes()
    saved = torch.load(state_file, weights_only=True)
    assert saved["next_round"] == 1

    # min_clients 3: NVFlare schedules the job only when every client is back (with the job's 2 it may
    # start before the last one has reconnected to the restarted server, and run without it)
    resumed_job = tiny_job(tmp_path / "resumed", poc_data,
                           **{"server.resume_from": str(state_file), "meta.min_clients": 3})
    resumed_id = _submit_when_server_is_back(federation, resumed_job)
    assert wait_for_job(federation, resumed_id, timeout=300) == "FINISHED:COMPLETED"
    results = federation.download(resumed_id, tmp_path / "download") / "workspace"
    log = (results / "log.txt").read_text()
    assert f"resuming from {state_file} at round 1" in log
    assert "Round 0 of" not in log and "Round 1 of 2 started" in log and "FedSM finished." in log
    assert state_file.read_bytes() == saved_bytes  # the source of the resume is never written to

    final = torch.load(results / "app_server" / "fedsm_state.pt", weights_only=True)
    assert final["next_round"] == 2 and float(final["selector_moments"]["step"]) == 2.0
    assert set(saved["best_metrics"]) <= set(final["best_metrics"])  # best metrics carried over
    for key in ("global", "selector", *(f"personalized/{client}" for client in CLIENTS)):
        assert final["best_metrics"][key] >= saved["best_metrics"][key], key
    # the downloaded job alone holds the federated test table of every site (scored at the sites)
    tested = json.loads((results / "app_server" / "test_results.json").read_text())
    assert sorted(tested["sites"]) == sorted(CLIENTS) and tested["pooled"]["images"] > 0
    # the downloaded job alone holds every site's curves, and the plot script draws them all from it
    for client in CLIENTS:
        assert sorted(scalars(results / TRACKING_FOLDER / client, "val_metric_global_model")) == [1, 2], client
    download = tmp_path / "download"
    _, curves = plot.read_workspace(download, plot.VALIDATION_TAGS)
    assert sorted(curves) == sorted(CLIENTS)
    assert all(set(curves[client]) == set(plot.VALIDATION_TAGS) for client in CLIENTS), curves
    png = plot.main(["--workspace", str(download)])
    assert png == download / plot.DEFAULT_OUTPUT_NAME and png.read_bytes().startswith(b"\x89PNG")


def _submit_when_server_is_back(federation, job, timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return federation.submit(job)
        except PocError:
            if time.monotonic() > deadline:
                raise
            time.sleep(2)
