"""FedSMRecipe: the checked-in job folder is its export, typed arguments land in the export and a bad one
fails naming it, filters go through the Recipe's own methods, `fedsm.job_config` derives jobs through it,
and scripts/fedsm_recipe.py builds SimEnv, PocEnv and ProdEnv and runs the recipe in SimEnv end to end (in
ProdEnv: tests/poc/test_poc_faults.py)."""

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from e2e_helpers import REPO, server_app, tiny_overrides
from nvflare.app_opt.pt.quantization.dequantizer import ModelDequantizer
from nvflare.app_opt.pt.quantization.quantizer import ModelQuantizer
from nvflare.recipe import PocEnv, ProdEnv, SimEnv
from recipe_script import SCRIPT, as_settings, run_script
from tiny_runs import CLIENTS

import fedsm
from fedsm.job_config import add_quantization, derive_job
from fedsm.recipe import DEFAULT_TRAIN, FedSMRecipe

JOB = REPO / "jobs" / "fedsm_prostate"
CONFIGS = {"meta": "meta.json", "server": "app/config/config_fed_server.json",
           "client": "app/config/config_fed_client.json", "train": "app/config/config_train.json"}
CONFIGS_IN_APP = [Path(relative).name for name, relative in CONFIGS.items() if name != "meta"]
QUANTIZER = "nvflare.app_opt.pt.quantization.quantizer.ModelQuantizer"
DEQUANTIZER = "nvflare.app_opt.pt.quantization.dequantizer.ModelDequantizer"
WORKFLOW = "fedsm.flare.workflow.FedSMController"


def read_configs(job: Path) -> dict:
    return {name: json.loads((job / relative).read_text()) for name, relative in CONFIGS.items()}


def args_of(app: dict, path: str) -> dict:
    """The args of the one workflow or component of class `path` in an app config."""
    found = [item.get("args", {}) for item in app.get("workflows", []) + app["components"] if item["path"] == path]
    assert len(found) == 1, f"{path} {len(found)} times in {app}"
    return found[0]


def filters(app: dict, key: str) -> list:
    """An app's filter chains as (sorted tasks, [(class path, args)])."""
    return [(sorted(entry["tasks"]), [(f["path"], f["args"]) for f in entry["filters"]]) for entry in app[key]]


def export(recipe: FedSMRecipe, root: Path) -> Path:
    recipe.export(str(root))
    return root / recipe.name


def python_files(folder: Path) -> set[str]:
    return {str(path.relative_to(folder)) for path in folder.rglob("*.py")}


def test_the_checked_in_job_folder_is_the_default_recipes_export(tmp_path):
    """`nvflare simulator jobs/fedsm_prostate` runs what FedSMRecipe() runs; after a change to the recipe,
    `python -m fedsm.recipe --write-job jobs/fedsm_prostate` writes the folder again."""
    exported = export(FedSMRecipe(), tmp_path)
    assert read_configs(exported) == read_configs(JOB)
    assert sorted(p.name for p in (exported / "app" / "config").iterdir()) == sorted(CONFIGS_IN_APP)
    assert FedSMRecipe().files_differing_from(JOB) == []
    package = Path(fedsm.__file__).parent
    assert python_files(exported / "app" / "custom" / "fedsm") == python_files(package)
    assert set((exported / "app" / "custom").iterdir()) == {exported / "app" / "custom" / "fedsm"}
    assert (exported / "app" / "custom" / "fedsm" / "PACKAGED_FROM.json").is_file()


def test_typed_arguments_land_in_the_export_as_the_real_components_args(tmp_path):
    train = dataclasses.replace(DEFAULT_TRAIN, image_size=64, selector="light", select_num_classes=2)
    recipe = FedSMRecipe(name="fedsm_small", client_id_label_mapping={"site_a": 0, "site_b": 1}, min_clients=1,
                         num_rounds=7, soft_pull_lambda=0.5, train=train, resume_from="/tmp/state.pt",
                         workflow={"train_timeout": 60, "max_steps_ratio": 2.0, "best_model_rule": "reference",
                                   "max_steps": {"site_a": 10}}, local_tensorboard=True)
    configs = read_configs(export(recipe, tmp_path))
    assert configs["meta"]["name"] == "fedsm_small" and configs["meta"]["min_clients"] == 1
    assert configs["train"] == {**DEFAULT_TRAIN.as_dict(), "image_size": 64, "selector": "light", "select_num_classes": 2}
    server = configs["server"]
    assert args_of(server, WORKFLOW) == {"num_rounds": 7, "client_id_label_mapping": {"site_a": 0, "site_b": 1},
                                         "train_timeout": 60, "max_steps_ratio": 2.0, "best_model_rule": "reference",
                                         "max_steps": {"site_a": 10}}
    assert server["num_rounds"] == 7
    assert args_of(server, "fedsm.flare.aggregator.FedSMAggregator") == {"soft_pull_lambda": 0.5}
    assert args_of(server, "fedsm.flare.persistor.FedSMModelPersistor") == {"resume_from": "/tmp/state.pt"}
    assert configs["client"]["executors"][0]["executor"]["args"] == {"local_tensorboard": True}


def test_a_job_for_sites_with_the_package_installed_carries_no_code(tmp_path):
    exported = export(FedSMRecipe(bring_code=False), tmp_path)
    assert read_configs(exported) == read_configs(JOB)
    assert not (exported / "app" / "custom").exists()


def test_script_arguments_land_in_the_exported_configs(tmp_path):
    result = run_script(["--num-rounds", "7", "--soft-pull-lambda", "0.5", "--selector", "light",
                         "--clients", "site_a,site_b", "--set", "train.image_size=64",
                         "--set", "workflow.parallel_tasks=false", "--export", "--export-dir", str(tmp_path)],
                        timeout=300)
    assert result.returncode == 0, result.stdout[-3000:]
    folder, exported = read_configs(JOB), read_configs(tmp_path / "fedsm_prostate")
    assert args_of(exported["server"], WORKFLOW) == {"num_rounds": 7, "parallel_tasks": False,
                                                     "client_id_label_mapping": {"site_a": 0, "site_b": 1}}
    assert args_of(exported["server"], "fedsm.flare.aggregator.FedSMAggregator") == {"soft_pull_lambda": 0.5}
    assert exported["train"] == {**folder["train"], "selector": "light", "select_num_classes": 2, "image_size": 64}
    assert exported["client"] == folder["client"]


def test_filters_are_added_with_the_recipes_own_methods(tmp_path):
    recipe = FedSMRecipe()
    recipe.add_client_output_filter(ModelQuantizer(quantization_type="blockwise8"), tasks=["train"])
    recipe.add_client_input_filter(ModelDequantizer(), tasks=["train", "validate"])
    recipe.add_server_input_filter(ModelDequantizer(), tasks=["train"])
    recipe.add_server_output_filter(ModelQuantizer(quantization_type="blockwise8"), tasks=["train", "validate"])
    configs = read_configs(export(recipe, tmp_path))
    quantize, dequantize = (QUANTIZER, {"quantization_type": "blockwise8"}), (DEQUANTIZER, {})
    assert filters(configs["client"], "task_result_filters") == [(["train"], [quantize])]
    assert filters(configs["client"], "task_data_filters") == [(["train", "validate"], [dequantize])]
    assert filters(configs["server"], "task_result_filters") == [(["train"], [dequantize])]
    assert filters(configs["server"], "task_data_filters") == [(["train", "validate"], [quantize])]
    # a server result filter needs the results in memory: the workflow's disk offload is turned off
    assert args_of(configs["server"], WORKFLOW)["tensor_disk_offload"] is False
    assert "tensor_disk_offload" not in args_of(read_configs(export(FedSMRecipe(), tmp_path / "plain"))["server"],
                                                WORKFLOW)  # on, its default


def test_job_config_quantizes_a_job_through_the_recipe(tmp_path):
    job = derive_job(JOB, tmp_path / "job", {"server.num_rounds": 3})
    add_quantization(job, "blockwise8")
    configs = read_configs(job)
    tasks, quantize, dequantize = ["train", "validate"], (QUANTIZER, {"quantization_type": "blockwise8"}), (DEQUANTIZER, {})
    assert filters(configs["client"], "task_result_filters") == [(tasks, [quantize])]
    assert filters(configs["client"], "task_data_filters") == [(tasks, [dequantize])]
    assert filters(configs["server"], "task_result_filters") == [(tasks, [dequantize])]
    assert filters(configs["server"], "task_data_filters") == [(tasks, [quantize])]
    assert args_of(configs["server"], WORKFLOW)["num_rounds"] == 3


@pytest.mark.parametrize("arguments, named", [
    ({"num_rounds": "5"}, "'num_rounds': Input should be a valid integer"),
    ({"num_rounds": 0}, "'num_rounds': Input should be greater than or equal to 1"),
    ({"soft_pull_lambda": 1.5}, "'soft_pull_lambda': Input should be less than or equal to 1"),
    ({"min_clients": 4}, "'min_clients' = 4 is more than the 3 clients"),
    ({"name": 7}, "'name': Input should be a valid string"),
    ({"train": {"image_size": 64}}, "'train': Input should be an instance of TrainConfig"),
    ({"train": dataclasses.replace(DEFAULT_TRAIN, selector="vgg16")}, "'selector' must be one of"),
    ({"train": dataclasses.replace(DEFAULT_TRAIN, image_size=0)}, "'image_size' must be > 0"),
    ({"workflow": {"train_timeout": "60"}}, "'workflow.train_timeout': Input should be a valid integer"),
    ({"workflow": {"parallel_tasks": 1}}, "'workflow.parallel_tasks': Input should be a valid boolean"),
    ({"workflow": {"no_such_setting": 1}}, "'workflow.no_such_setting': Extra inputs are not permitted"),
    ({"workflow": {"num_rounds": 5}}, r"'workflow' sets \['num_rounds'\], which the recipe sets itself"),
    ({"client_id_label_mapping": {"site_a": 0, "site_b": 2}}, r"client_id_label_mapping\['site_b'\] = 2"),
    ({"client_id_label_mapping": {"site_a": True}}, r"'client_id_label_mapping.site_a': Input should be a valid int"),
])
def test_a_bad_argument_fails_naming_it(arguments, named):
    with pytest.raises(ValueError, match=named):
        FedSMRecipe(**arguments)


@pytest.mark.parametrize("settings, named", [
    ({"train.no_such_key": 1}, r"unknown keys \['no_such_key'\]"),
    ({"train.amp": "yes"}, "'amp' must be true or false, got 'yes'"),
    ({"server.no_such_variable": 1}, "setting 'server.no_such_variable'"),
    ({"workflow.train_timeout": "60"}, "'workflow.train_timeout'"),
    ({"meta.min_clients": 0}, "'min_clients'"),
])
def test_a_bad_setting_fails_naming_it(settings, named):
    with pytest.raises(ValueError, match=named):
        FedSMRecipe.from_settings(settings)


def test_job_config_derives_a_job_through_the_recipe(tmp_path):
    settings = {"server.num_rounds": 3, "train.image_size": 64, "workflow.train_timeout": 60, "meta.min_clients": 3}
    derived = derive_job(JOB, tmp_path / "derived", settings)
    assert FedSMRecipe.from_settings(settings).files_differing_from(derived) == []
    again = derive_job(derived, tmp_path / "again", {"server.soft_pull_lambda": 0.5})
    assert FedSMRecipe.from_settings({**settings, "server.soft_pull_lambda": 0.5}).files_differing_from(again) == []
    server_file = derived / CONFIGS["server"]
    server = json.loads(server_file.read_text())
    server["components"].append({"id": "extra", "path": "fedsm.flare.simulator_guard.SimulatorClientStartGuard"})
    server_file.write_text(json.dumps(server))
    with pytest.raises(ValueError, match=r"\['app/config/config_fed_server.json'\] hold what FedSMRecipe's"):
        derive_job(derived, tmp_path / "refused", {})


@pytest.mark.parametrize("env, named", [(SimEnv(clients=[*CLIENTS, "client_X"]), "client_X"),
                                        (SimEnv(num_clients=2), "site-1")])
def test_clients_missing_from_the_label_mapping_stop_the_run_before_it_starts(env, named):
    with pytest.raises(ValueError, match=f"{named}.*client_id_label_mapping"):
        FedSMRecipe().process_env(env)


def test_the_scripts_environments(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    monkeypatch.setenv("NVFLARE_POC_WORKSPACE", str(tmp_path))
    from fedsm_recipe import make_env, parse_args

    env = make_env(parse_args(["--env", "poc", "--workspace", str(tmp_path / "poc")]), ["a", "b", "c"])
    assert isinstance(env, PocEnv) and env.clients == ["a", "b", "c"] and env.num_clients == 3
    assert env.poc_workspace == str(tmp_path / "poc")
    kit = tmp_path / "admin@example.org"
    kit.mkdir()
    env = make_env(parse_args(["--env", "prod", "--startup-kit", str(kit), "--username", "admin@example.org"]), [])
    assert isinstance(env, ProdEnv) and env.startup_kit_location == str(kit) and env.username == "admin@example.org"
    FedSMRecipe().process_env(env)  # a provisioned project names its own clients
    with pytest.raises(SystemExit):
        parse_args(["--env", "prod"])


def test_script_writes_the_job_folder(tmp_path):
    result = run_script(["--write-job", str(tmp_path / "job")], timeout=300)
    assert result.returncode == 0, result.stdout[-3000:]
    assert read_configs(tmp_path / "job") == read_configs(JOB)


def test_script_runs_the_recipe_in_sim_env(tiny_data, tmp_path):
    overrides = tiny_overrides(tiny_data, **{"server.num_rounds": 1})
    result = run_script(["--workspace", str(tmp_path), *as_settings(overrides)], timeout=600)
    assert result.returncode == 0, result.stdout[-3000:]
    workspace = tmp_path / "fedsm_prostate"
    state = torch.load(server_app(workspace) / "fedsm_state.pt", weights_only=True)
    assert state["next_round"] == 1
    assert "FedSM finished." in result.stdout
    assert "patched NVFlare" in result.stdout
    assert f"results in {workspace}" in result.stdout
