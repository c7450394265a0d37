"""NVFlare's stock DXO filters on FedSM messages, configured as NVFlare documents them, in the simulator.

Each test reads the run of its own job (`JOBS`); the module's runs go side by side (`runs`)."""

import ast
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from e2e_helpers import make_job, server_app, tiny_overrides
from tiny_runs import CLIENTS, finish, start_simulator

from fedsm.config import TrainConfig
from fedsm.job_config import QUANTIZER, add_quantization
from fedsm.core.selector_update import expected_moment_shapes
from fedsm.flare.persistor import initial_model_set
from fedsm.models.networks import build_models
from fedsm.models.weights import get_weights

TASKS = ["train", "validate"]
MB = 1024 * 1024


def _set_filters(job: Path, side: str, app: str = "app", **chains) -> None:
    """Write `task_data_filters` / `task_result_filters` chains (lists of filter specs) into a config."""
    config_file = job / app / "config" / f"config_fed_{side}.json"
    config = json.loads(config_file.read_text())
    for key, filters in chains.items():
        config[key] = [{"tasks": TASKS, "filters": filters}]
    config_file.write_text(json.dumps(config, indent=2))


def _round_costs(log: str) -> list[tuple[float, float]]:
    """(down MB, up MB) per client of every round, as the server logs them."""
    return [(float(down), float(up)) for down, up in
            re.findall(r"Round \d+ cost: .* per client down ([\d.]+) MB up ([\d.]+) MB", log)]


def _every_site_in_every_round(log: str, rounds: int) -> None:
    for round_number in range(rounds):
        assert f"Round {round_number} finished" in log, log[-3000:]
        assert f"aggregated {sorted(CLIENTS)}" in log.split(f"Round {round_number} finished")[1].splitlines()[0]
    assert "rejected" not in log and "FedSM finished." in log


def _model_bytes(job: Path) -> tuple[int, int]:
    """Bytes of one UNet and of the selector of the job's config (all float32)."""
    config = json.loads((job / "app" / "config" / "config_train.json").read_text())
    models = build_models(config)
    size = lambda model: sum(a.nbytes for a in get_weights(model).values())  # noqa: E731
    return size(models["global"]), size(models["selector"])


def _quantized_job(tmp_path: Path, data: Path, quantization_type: str) -> Path:
    job = make_job(tmp_path, "job", tiny_overrides(data))
    add_quantization(job, quantization_type)  # the configs the README shows
    return job


def _private_job(tmp_path: Path, data: Path) -> Path:
    job = make_job(tmp_path, "job", tiny_overrides(data))
    exclude = {"path": "nvflare.app_common.filters.ExcludeVars", "args": {"exclude_vars": r"^(features|classifier)\."}}
    privacy = {"path": "nvflare.app_common.filters.PercentilePrivacy",
               "args": {"percentile": 10, "gamma": 0.01, "data_kinds": ["WEIGHT_DIFF"]}}
    _set_filters(job, "client", task_result_filters=[exclude, privacy])
    return job


def _job_with_a_breaking_filter(tmp_path: Path, data: Path) -> Path:
    """client_MSD quantizes its results; the server does not dequantize them."""
    job = make_job(tmp_path, "job", tiny_overrides(data))
    shutil.copytree(job / "app", job / "app_msd")
    _set_filters(job, "client", app="app_msd",
                 task_result_filters=[{"path": QUANTIZER, "args": {"quantization_type": "float16"}}])
    others = [c for c in CLIENTS if c != "client_MSD"]
    meta_file = job / "meta.json"
    meta = json.loads(meta_file.read_text())
    meta["deploy_map"] = {"app": ["server", *others], "app_msd": ["client_MSD"]}
    meta_file.write_text(json.dumps(meta, indent=2))
    return job


def _job_with_an_unknown_filter(tmp_path: Path, data: Path) -> Path:
    job = make_job(tmp_path, "job", tiny_overrides(data))
    _set_filters(job, "client", task_result_filters=[{"path": "nvflare.app_common.filters.NoSuchFilter", "args": {}}])
    return job


# each test (as pytest names it) -> (the job it runs, made in a folder from the data; its clients; the run's
# timeout in s). Every client builds the unknown filter alike, so one client shows it.
JOBS = {
    "test_quantization_both_ways_halves_weights_on_the_wire[float16]": (
        lambda tmp_path, data: _quantized_job(tmp_path, data, "float16"), CLIENTS, 300),
    "test_quantization_both_ways_halves_weights_on_the_wire[blockwise8]": (
        lambda tmp_path, data: _quantized_job(tmp_path, data, "blockwise8"), CLIENTS, 300),
    "test_exclude_vars_and_percentile_privacy": (_private_job, CLIENTS, 300),
    "test_a_filter_that_breaks_a_part_gets_only_that_site_rejected": (_job_with_a_breaking_filter, CLIENTS, 300),
    "test_an_unknown_filter_class_stops_the_job_at_start_naming_it": (_job_with_an_unknown_filter, CLIENTS[:1], 180),
}


def _skips_blockwise8(name: str) -> bool:
    return "blockwise8" in name and not torch.cuda.is_available()


@pytest.fixture(scope="module")
def runs(request, tiny_data, tmp_path_factory) -> dict:
    """test name -> (job, workspace, future of the run) for the selected tests of this module: their runs
    start together (`tiny_runs.start_simulator`, in the tests' order) and are over when the module is."""
    started = {}
    for item in request.session.items:
        if item.module is request.module and item.name in JOBS and not _skips_blockwise8(item.name):
            make, clients, timeout = JOBS[item.name]
            tmp = tmp_path_factory.mktemp("filters")
            job = make(tmp, tiny_data)
            started[item.name] = (job, tmp / "ws", start_simulator(job, tmp / "ws", clients, timeout))
    yield started
    finish([future for _, _, future in started.values()])


def _run_of(runs: dict, request) -> tuple[Path, Path, str, int]:
    """(job, workspace, output, exit code) of the run of the test asking, once it is over."""
    job, workspace, future = runs[request.node.name]
    result = future.result()
    return job, workspace, result.stdout, result.returncode


@pytest.mark.parametrize("quantization_type", ["float16", "blockwise8"])
def test_quantization_both_ways_halves_weights_on_the_wire(runs, request, quantization_type):
    if _skips_blockwise8(request.node.name):
        pytest.skip("NVFlare 2.9's ModelQuantizer runs blockwise8 on CUDA only")
    job, _, log, returncode = _run_of(runs, request)  # the job: `_quantized_job`
    assert returncode == 0
    _every_site_in_every_round(log, 2)
    server = json.loads((job / "app" / "config" / "config_fed_server.json").read_text())
    assert server["workflows"][0]["args"]["tensor_disk_offload"] is False  # the recipe's, for the server's filters
    unet, selector = _model_bytes(job)
    factor = {"float16": 0.5, "blockwise8": 0.25}[quantization_type]
    # the default mode: down global, personalized, selector weights; up global diff, personalized and the
    # selector's full-batch gradient (WEIGHT_DIFF, quantized too); no moments travel either way
    expected = factor * (2 * unet + selector) / MB
    costs = _round_costs(log)
    assert len(costs) == 2
    for down, up in costs:
        assert down == pytest.approx(expected, abs=0.1 + 0.02 * expected)
        assert up == pytest.approx(expected, abs=0.1 + 0.02 * expected)


def test_exclude_vars_and_percentile_privacy(runs, request):
    """ExcludeVars keeps the selector's gradient at home (the server's selector never changes),
    PercentilePrivacy filters the global difference, and the server sees both in the filter histories
    (the job: `_private_job`)."""
    job, workspace, log, returncode = _run_of(runs, request)
    assert returncode == 0
    _every_site_in_every_round(log, 2)
    histories = [ast.literal_eval(h) for h in re.findall(r"reply of \w+ to 'train': filters applied (.*)", log)]
    assert len(histories) == 2 * len(CLIENTS)
    assert all("PercentilePrivacy" in h["global"] and "ExcludeVars" in h["selector_gradient"] for h in histories)
    state = torch.load(server_app(workspace) / "fedsm_state.pt", weights_only=True)
    config = TrainConfig.from_file(job / "app" / "config" / "config_train.json")
    initial = initial_model_set(config, CLIENTS)
    for name, weights in initial.selector.items():
        np.testing.assert_array_equal(state["selector"][name].numpy(), weights, err_msg=name)
    # no gradient arrived, so the moments stay complete and at zero (a fresh optimizer state)
    assert set(state["selector_moments"]) == set(expected_moment_shapes(initial.selector))
    assert all(not t.any() for key, t in state["selector_moments"].items() if key != "step")
    changed = [name for name, weights in initial.global_model.items()
               if not np.array_equal(state["global"][name].numpy(), weights)]
    assert changed and all(torch.isfinite(t).all() for t in state["global"].values())


def test_a_filter_that_breaks_a_part_gets_only_that_site_rejected(runs, request):
    """client_MSD quantizes its results but the server does not dequantize them (`_job_with_a_breaking_filter`):
    its float16 update is rejected, naming the filter, and the other sites aggregate every round."""
    _, _, log, returncode = _run_of(runs, request)
    others = [c for c in CLIENTS if c != "client_MSD"]
    assert returncode == 0
    rejections = re.findall(r"reply of client_MSD to 'train' rejected: (.*)", log)
    assert len(rejections) == 2
    assert all("dtype float16, expected float32" in r and "ModelQuantizer" in r for r in rejections)
    for round_number in range(2):
        assert f"aggregated {others}" in log.split(f"Round {round_number} finished")[1].splitlines()[0]


def test_an_unknown_filter_class_stops_the_job_at_start_naming_it(runs, request):
    _, _, log, _ = _run_of(runs, request)  # the job: `_job_with_an_unknown_filter`
    assert "NoSuchFilter" in log
    assert "Round 0 finished" not in log
