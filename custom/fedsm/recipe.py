"""`FedSMRecipe`: the FedSM job as an NVFlare 2.9 recipe, built from the job folder's own configs.

The job folder (`jobs/fedsm_prostate`) stays the one source of truth. The recipe derives a copy of it
with the recipe's arguments applied (the same overrides `python -m fedsm.job_config --set` applies,
code packaged in `app/custom`), reads that copy's `meta.json` and `app/config` files, and writes every
component, workflow, executor and filter into an NVFlare `FedJob` by the class path and args found
there. Nothing about a component is written down here, so the folder and the recipe cannot drift apart.

    recipe = FedSMRecipe(num_rounds=20, selector="light", overrides={"train.image_size": 64})
    recipe.export("/tmp/fedsm_jobs")              # -> /tmp/fedsm_jobs/fedsm_prostate
    recipe.run(SimEnv(clients=recipe.clients))    # or PocEnv(clients=recipe.clients)
"""

import importlib
import inspect
import json
import tempfile
from pathlib import Path
from typing import Any, Sequence

from nvflare.apis.executor import Executor
from nvflare.apis.filter import Filter
from nvflare.apis.impl.controller import Controller
from nvflare.apis.job_def import ALL_SITES, SERVER_SITE_NAME
from nvflare.job_config.api import FedJob
from nvflare.job_config.defs import FilterType
from nvflare.recipe.spec import ExecEnv, Recipe

from .config import read_job_configs
from .core.label_mapping import LABEL_MAPPING
from .job_config import derive_job

DEFAULT_JOB = Path(__file__).resolve().parents[2] / "jobs" / "fedsm_prostate"
SERVER_CONFIG = "config_fed_server.json"
CLIENT_CONFIG = "config_fed_client.json"
FILTER_KEYS = {"task_data_filters": FilterType.TASK_DATA, "task_result_filters": FilterType.TASK_RESULT}
# keys FedJob writes itself; every other top-level key of an app config is carried over as a parameter
APP_STRUCTURE = {"format_version", "components", "workflows", "executors", *FILTER_KEYS}
META_BY_FEDJOB = {"name", "min_clients", "mandatory_clients", "deploy_map"}

# a filter alone applies to every task; a (filter, tasks) pair to those tasks
FilterSpec = Filter | tuple[Filter, Sequence[str]]


def configured(path: str, args: dict, base: type = object) -> object:
    """A stand-in that FedJob writes into a config as `{"path": path, "args": args}`.

    FedJob serializes an object from its class (module and name) and the constructor arguments it finds
    among the object's attributes. Building the real class would run it here and drop every argument
    it stores under another name; this stand-in carries the configured args as they are. `base`
    (Controller, Executor, Filter) is the type FedJob expects in that place.
    """
    module_name, _, class_name = path.rpartition(".")
    try:
        module = importlib.import_module(module_name)  # FedJob finds the class's source through its module
    except (ImportError, ValueError) as error:
        raise ValueError(f"component class '{path}': cannot import its module: {error}") from error
    if not isinstance(getattr(module, class_name, None), type):
        raise ValueError(f"component class '{path}': module {module_name} has no class {class_name}")

    def __init__(self):
        base.__init__(self)  # FedJob calls into the base's own state (e.g. a Controller's communicator)
        self.__dict__.update(args)

    __init__.__signature__ = inspect.Signature(
        [inspect.Parameter("self", inspect.Parameter.POSITIONAL_ONLY)]
        + [inspect.Parameter(key, inspect.Parameter.KEYWORD_ONLY) for key in args])
    stand_in = type(class_name, (base,), {"__module__": module_name, "__init__": __init__,
                                          "_always_serialize_args": tuple(args)})
    stand_in.__abstractmethods__ = frozenset()  # never run, so the base's abstract methods need no body
    return stand_in()


def _read(path: Path) -> dict:
    return json.loads(path.read_text())


class FedSMRecipe(Recipe):
    def __init__(
        self,
        *,
        job_folder: str | Path = DEFAULT_JOB,
        num_rounds: int | None = None,
        soft_pull_lambda: float | None = None,
        selector: str | None = None,
        selector_training: str | None = None,
        client_id_label_mapping: dict[str, int] | None = None,
        overrides: dict[str, Any] | None = None,
        client_input_filters: Sequence[FilterSpec] = (),
        client_output_filters: Sequence[FilterSpec] = (),
        server_input_filters: Sequence[FilterSpec] = (),
        server_output_filters: Sequence[FilterSpec] = (),
    ):
        """FedSM from `job_folder`'s configs; an argument left at None keeps the folder's value.

        Args:
            num_rounds, soft_pull_lambda: the server config's variables of those names.
            selector: `vgg11` or `light`; selector_training: `client_adam`, `client_adam_on_server` or
                `server_adam` (keys of config_train.json).
            client_id_label_mapping: client name -> selector label 0..K-1; also sets `select_num_classes` to K.
            overrides: any other `{"section.key": value}` as in `python -m fedsm.job_config --set`
                (`train.image_size`, `workflow.train_timeout`, `meta.min_clients`, ...).
            client_input_filters, client_output_filters: task data / task result filters of the clients;
                server_input_filters, server_output_filters: task result / task data filters of the server.
                Each item is a Filter (all tasks) or a (Filter, tasks) pair. Filters must keep FedSM's
                arrays torch tensors (docs/deployment.md).
        """
        self.settings = self._settings(num_rounds, soft_pull_lambda, selector, selector_training,
                                       client_id_label_mapping, dict(overrides or {}))
        # the derived copy holds the code and config files the FedJob copies at export or run time
        self._staging = tempfile.TemporaryDirectory(prefix="fedsm_recipe_")
        derived = derive_job(job_folder, Path(self._staging.name) / "job", self.settings)
        config_dir = derived / "app" / "config"
        configs = read_job_configs(derived, described_as=f"{job_folder} with {self.settings}")
        server = configs.server
        self.client_id_label_mapping = configs.label_mapping
        self.clients = list(self.client_id_label_mapping)

        job = self._new_job(_read(derived / "meta.json"))
        self._add_app(job, SERVER_SITE_NAME, server)
        self._add_app(job, ALL_SITES, _read(config_dir / CLIENT_CONFIG))
        self._add_files(job, derived / "app")
        super().__init__(job)
        for add, filters in ((self.add_client_input_filter, client_input_filters),
                             (self.add_client_output_filter, client_output_filters),
                             (self.add_server_input_filter, server_input_filters),
                             (self.add_server_output_filter, server_output_filters)):
            for spec in filters:
                task_filter, tasks = spec if isinstance(spec, tuple) else (spec, ["*"])
                add(task_filter, tasks=list(tasks))

    @staticmethod
    def _settings(num_rounds, soft_pull_lambda, selector, selector_training, mapping, overrides) -> dict:
        named = {"server.num_rounds": num_rounds, "server.soft_pull_lambda": soft_pull_lambda,
                 "train.selector": selector, "train.selector_training": selector_training,
                 f"workflow.{LABEL_MAPPING}": mapping,
                 "train.select_num_classes": len(mapping) if mapping is not None else None}
        named = {key: value for key, value in named.items() if value is not None}
        both = sorted(set(named) & set(overrides))
        if both:
            raise ValueError(f"{both} given both as a FedSMRecipe argument and in overrides; give each once")
        return {**overrides, **named}

    @staticmethod
    def _new_job(meta: dict) -> FedJob:
        if meta.get("deploy_map") != {"app": [ALL_SITES]}:
            raise ValueError(f"meta.json: 'deploy_map' must deploy the one app 'app' to '{ALL_SITES}', "
                             f"got {meta.get('deploy_map')}")
        return FedJob(name=meta["name"], min_clients=meta["min_clients"],
                      mandatory_clients=meta.get("mandatory_clients"),
                      meta_props={key: value for key, value in meta.items() if key not in META_BY_FEDJOB})

    @staticmethod
    def _add_app(job: FedJob, target: str, config: dict) -> None:
        """Carry one app config (server or clients) into `job`: parameters, components, workflows,
        executors and filters, each by its class path and args."""
        parameters = {key: value for key, value in config.items() if key not in APP_STRUCTURE}
        if parameters:
            job.to(parameters, target)
        for component in config.get("components", []):
            job.to(configured(component["path"], component.get("args", {})), target, id=component["id"])
        for workflow in config.get("workflows", []):
            job.to(configured(workflow["path"], workflow.get("args", {}), Controller), target, id=workflow["id"])
        for entry in config.get("executors", []):
            executor = entry["executor"]
            job.to(configured(executor["path"], executor.get("args", {}), Executor), target, tasks=entry["tasks"])
        for key, filter_type in FILTER_KEYS.items():
            for entry in config.get(key, []):
                for task_filter in entry["filters"]:
                    job.to(configured(task_filter["path"], task_filter.get("args", {}), Filter), target,
                           filter_type=filter_type, tasks=entry["tasks"])

    @staticmethod
    def _add_files(job: FedJob, app: Path) -> None:
        """Ship the app's other config files (config_train.json) and its custom code as they are."""
        custom = app / "custom"
        # the code travels as whole packages; FedJob must not also copy the components' modules one by one
        job.set_app_packages(sorted(p.name for p in custom.iterdir() if (p / "__init__.py").is_file()))
        for target in (SERVER_SITE_NAME, ALL_SITES):
            job.add_file_to(str(custom), target)
            for file in sorted((app / "config").iterdir()):
                if file.name not in (SERVER_CONFIG, CLIENT_CONFIG):
                    job.add_file_to(str(file), target, app_folder_type="config")

    def process_env(self, env: ExecEnv) -> None:
        """Stop before deploying when the environment's clients are not all in the label mapping."""
        clients = getattr(env, "clients", None)
        if clients is None and getattr(env, "num_clients", 0):
            clients = [f"site-{i}" for i in range(1, env.num_clients + 1)]  # the names SimEnv and PocEnv give
        unknown = [client for client in clients or [] if client not in self.client_id_label_mapping]
        if unknown:
            raise ValueError(f"clients {unknown} of the {type(env).__name__} are not in {LABEL_MAPPING} "
                             f"{self.client_id_label_mapping}; run with clients={self.clients} or pass a mapping "
                             "that names them")
