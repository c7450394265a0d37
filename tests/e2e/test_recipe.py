"""FedSMRecipe: its export equals the job folder it reads, its arguments and filters land in the export,
errors name the setting at fault, and scripts/fedsm_recipe.py runs it in SimEnv end to end."""

import json
import re
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import torch
from e2e_helpers import REPO, server_app, tiny_overrides
from nvflare.app_opt.pt.quantization.dequantizer import ModelDequantizer
from nvflare.app_opt.pt.quantization.quantizer import ModelQuantizer
from nvflare.recipe import PocEnv, SimEnv
from tiny_runs import CLIENTS

import fedsm
from fedsm.job_config import derive_job
from fedsm.recipe import FedSMRecipe

JOB = REPO / "jobs" / "fedsm_prostate"
SCRIPT = REPO / "scripts" / "fedsm_recipe.py"
CONFIGS = {"meta": "meta.json", "server": "app/config/config_fed_server.json",
           "client": "app/config/config_fed_client.json", "train": "app/config/config_train.json"}
STRUCTURE = {"format_version", "components", "workflows", "executors", "task_data_filters", "task_result_filters"}
VARIABLE = re.compile(r"\{(\w+)\}")
QUANTIZER = "nvflare.app_opt.pt.quantization.quantizer.ModelQuantizer"
DEQUANTIZER = "nvflare.app_opt.pt.quantization.dequantizer.ModelDequantizer"


def read_configs(job: Path) -> dict:
    return {name: json.loads((job / relative).read_text()) for name, relative in CONFIGS.items()}


def substitute(value, variables: dict):
    """NVFlare's `{var}` substitution: a string that is one variable becomes its value (with its type); a
    variable inside a longer string is replaced by its text."""
    if isinstance(value, dict):
        return {key: substitute(item, variables) for key, item in value.items()}
    if isinstance(value, list):
        return [substitute(item, variables) for item in value]
    if not isinstance(value, str):
        return value
    whole = VARIABLE.fullmatch(value)
    if whole and whole.group(1) in variables:
        return variables[whole.group(1)]
    return VARIABLE.sub(lambda m: str(variables.get(m.group(1), m.group(0))), value)


def normalized_app(config: dict) -> dict:
    """An app config as what it means: variables, then components and workflows by id, executors and filter
    chains in order, every arg with its variables resolved. Task lists are sets to NVFlare (and FedJob
    writes them in set order); an executor's optional id is not used by NVFlare and FedJob writes none."""
    variables = {key: value for key, value in config.items() if key not in STRUCTURE}
    resolved = substitute({key: value for key, value in config.items() if key in STRUCTURE}, variables)

    def spec(item):
        return item["path"], item.get("args", {})

    return {
        "format_version": resolved.get("format_version"),
        "variables": variables,
        "components": {item["id"]: spec(item) for item in resolved.get("components", [])},
        "workflows": {item["id"]: spec(item) for item in resolved.get("workflows", [])},
        "executors": [(sorted(item["tasks"]), spec(item["executor"])) for item in resolved.get("executors", [])],
        **{key: [(sorted(entry["tasks"]), [spec(f) for f in entry["filters"]]) for entry in resolved.get(key, [])]
           for key in ("task_data_filters", "task_result_filters")},
    }


def normalized(configs: dict) -> dict:
    return {"meta": configs["meta"], "train": configs["train"], "server": normalized_app(configs["server"]),
            "client": normalized_app(configs["client"])}


def arg_values(app: dict, section: str, key: str) -> list:
    """Every value of the arg `key` among the `section` ("components", "workflows") of a normalized app."""
    return [args[key] for _, args in app[section].values() if key in args]


def export(recipe: FedSMRecipe, root: Path) -> Path:
    recipe.export(str(root))
    return root / recipe.name


def python_files(folder: Path) -> set[str]:
    return {str(path.relative_to(folder)) for path in folder.rglob("*.py")}


def run_script(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    """Run scripts/fedsm_recipe.py; past `timeout` its whole process tree (the simulator runs in a session
    of its own) is killed and the test fails with the end of its output."""
    process = subprocess.Popen([sys.executable, str(SCRIPT), *args], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, cwd=REPO)
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        for child in psutil.Process(process.pid).children(recursive=True) + [psutil.Process(process.pid)]:
            child.kill()
        output, _ = process.communicate(timeout=60)
        raise AssertionError(f"{SCRIPT.name} did not finish in {timeout} s:\n{output[-3000:]}")
    return subprocess.CompletedProcess(process.args, process.returncode, output, "")


def as_settings(overrides: dict) -> list[str]:
    return [f"--set={key}={json.dumps(value)}" for key, value in overrides.items()]


def test_normalizing_resolves_variables_and_keeps_every_difference():
    config = {"format_version": 2, "rounds": 5, "name": "x",
              "components": [{"id": "c", "path": "m.C", "args": {"n": "{rounds}", "file": "{name}.pt", "k": "{other}"}}],
              "workflows": [], "executors": [{"tasks": ["b", "a"], "executor": {"id": "e", "path": "m.E"}}]}
    app = normalized_app(config)
    assert app["components"] == {"c": ("m.C", {"n": 5, "file": "x.pt", "k": "{other}"})}
    assert app["executors"] == [(["a", "b"], ("m.E", {}))]
    changed = json.loads(json.dumps(config))
    changed["components"][0]["args"]["file"] = "y.pt"
    assert normalized_app(changed) != app


@pytest.fixture(scope="module")
def job_with_filters(tmp_path_factory) -> Path:
    """The job with filters in all four places and a client component, to show they carry over too."""
    job = derive_job(JOB, tmp_path_factory.mktemp("filtered") / "fedsm_prostate", {})
    quantize = [{"tasks": ["train"], "filters": [{"path": QUANTIZER, "args": {"quantization_type": "blockwise8"}}]}]
    dequantize = [{"tasks": ["train"], "filters": [{"path": DEQUANTIZER, "args": {}}]}]
    for name, data_filters, result_filters in (("server", quantize, dequantize), ("client", dequantize, quantize)):
        file = job / CONFIGS[name]
        config = json.loads(file.read_text())
        config.update(task_data_filters=data_filters, task_result_filters=result_filters)
        if name == "client":
            config["components"] = [{"id": "extra", "path": "fedsm.flare.simulator_guard.SimulatorClientStartGuard",
                                     "args": {}}]
        file.write_text(json.dumps(config))
    return job


@pytest.mark.parametrize("variant", ["as shipped", "with filters"])
def test_export_without_arguments_equals_the_job_folder(variant, job_with_filters, tmp_path):
    folder = JOB if variant == "as shipped" else job_with_filters
    exported = export(FedSMRecipe(job_folder=folder), tmp_path)
    assert normalized(read_configs(exported)) == normalized(read_configs(folder))
    package = Path(fedsm.__file__).parent
    assert python_files(exported / "app" / "custom" / "fedsm") == python_files(package)
    assert set((exported / "app" / "custom").iterdir()) == {exported / "app" / "custom" / "fedsm"}


def test_script_arguments_land_in_the_exported_configs(tmp_path):
    result = run_script(["--num-rounds", "7", "--soft-pull-lambda", "0.5", "--selector", "light",
                         "--clients", "site_a,site_b", "--set", "train.image_size=64",
                         "--export", "--export-dir", str(tmp_path)], timeout=300)
    assert result.returncode == 0, result.stdout[-3000:]
    folder, exported = normalized(read_configs(JOB)), normalized(read_configs(tmp_path / "fedsm_prostate"))
    assert exported != folder
    server = exported["server"]
    assert arg_values(server, "workflows", "num_rounds") == [7]
    assert arg_values(server, "components", "soft_pull_lambda") == [0.5]
    assert arg_values(server, "workflows", "client_id_label_mapping") == [{"site_a": 0, "site_b": 1}]
    assert exported["train"] == {**folder["train"], "selector": "light", "select_num_classes": 2, "image_size": 64}
    assert exported["client"] == folder["client"]


def test_recipe_filters_land_in_the_exported_configs(tmp_path):
    recipe = FedSMRecipe(client_output_filters=[(ModelQuantizer(quantization_type="blockwise8"), ["train"])],
                         server_input_filters=[(ModelDequantizer(), ["train"])],
                         server_output_filters=[ModelQuantizer(quantization_type="blockwise8")],
                         client_input_filters=[ModelDequantizer()])
    exported = normalized(read_configs(export(recipe, tmp_path)))
    quantize, dequantize = (QUANTIZER, {"quantization_type": "blockwise8"}), (DEQUANTIZER, {})
    assert exported["client"]["task_result_filters"] == [(["train"], [quantize])]
    assert exported["client"]["task_data_filters"] == [(["*"], [dequantize])]
    assert exported["server"]["task_result_filters"] == [(["train"], [dequantize])]
    assert exported["server"]["task_data_filters"] == [(["*"], [quantize])]


@pytest.mark.parametrize("arguments, error, named", [
    ({"selector": "vgg16"}, ValueError, "'selector'"),
    ({"overrides": {"train.no_such_key": 1}}, KeyError, "no_such_key"),
    ({"num_rounds": 5, "overrides": {"server.num_rounds": 6}}, ValueError, "server.num_rounds"),
    ({"client_id_label_mapping": {"site_a": 0, "site_b": 2}}, ValueError, "site_b"),
    ({"job_folder": REPO / "no_such_job"}, FileNotFoundError, "no_such_job"),
])
def test_bad_arguments_fail_naming_the_setting(arguments, error, named):
    with pytest.raises(error, match=named):
        FedSMRecipe(**arguments)


@pytest.mark.parametrize("env, named", [(SimEnv(clients=[*CLIENTS, "client_X"]), "client_X"),
                                        (SimEnv(num_clients=2), "site-1")])
def test_clients_missing_from_the_label_mapping_stop_the_run_before_it_starts(env, named):
    with pytest.raises(ValueError, match=f"{named}.*client_id_label_mapping"):
        FedSMRecipe().process_env(env)


def test_poc_env_of_the_script_has_the_mapping_clients(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    monkeypatch.setenv("NVFLARE_POC_WORKSPACE", str(tmp_path))
    from fedsm_recipe import make_env, parse_args

    env = make_env(parse_args(["--env", "poc", "--workspace", str(tmp_path / "poc")]), ["a", "b", "c"])
    assert isinstance(env, PocEnv) and env.clients == ["a", "b", "c"] and env.num_clients == 3
    assert env.poc_workspace == str(tmp_path / "poc")


def test_script_runs_the_recipe_in_sim_env(tiny_data, tmp_path):
    overrides = tiny_overrides(tiny_data, **{"server.num_rounds": 1})
    result = run_script(["--workspace", str(tmp_path), *as_settings(overrides)], timeout=600)
    assert result.returncode == 0, result.stdout[-3000:]
    workspace = tmp_path / "fedsm_prostate"
    state = torch.load(server_app(workspace) / "fedsm_state.pt", weights_only=True)
    assert state["next_round"] == 1
    assert "FedSM finished." in result.stdout
    assert f"results in {workspace}" in result.stdout
