"""`FedSMRecipe`: the FedSM job as an NVFlare 2.9 recipe, and the one source of `jobs/fedsm_prostate`.

Typed, validated arguments build the real components (workflow, aggregator, persistor, learner,
experiment tracking), NVFlare's `FedJob` writes their configs, and the job folder is exported from it:

    recipe = FedSMRecipe(num_rounds=20, train=dataclasses.replace(DEFAULT_TRAIN, image_size=64, selector="light"))
    recipe.add_client_output_filter(ModelQuantizer(quantization_type="float16"), tasks=["train"])
    recipe.run(SimEnv(clients=recipe.clients))   # or PocEnv(clients=recipe.clients), ProdEnv(startup_kit_location=...)

    python -m fedsm.recipe --write-job jobs/fedsm_prostate   # regenerate the checked-in job folder

The job brings its own code (BYOC): the `fedsm` package is packaged into `app/custom` with the record
`check_packaged_code` reads (see `fedsm.job_config`).
"""

import argparse
import dataclasses
import inspect
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from nvflare.apis.analytix import ANALYTIC_EVENT_TYPE
from nvflare.apis.filter import Filter
from nvflare.app_common.widgets.convert_to_fed_event import ConvertToFedEvent
from nvflare.app_opt.tracking.tb.tb_receiver import TBAnalyticsReceiver
from nvflare.app_opt.tracking.tb.tb_writer import TBWriter
from nvflare.job_config.api import FedJob
from nvflare.recipe.spec import ExecEnv, Recipe
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from .config import TrainConfig
from .core.label_mapping import LABEL_MAPPING, check_label_mapping, configured_label_mapping
from .evaluation import DEFAULT_THRESHOLD
from .flare.aggregator import FedSMAggregator
from .flare.evaluation_workflow import FedSMEvaluationController
from .flare.evaluator import FedSMEvaluator
from .flare.heap_trimmer import HeapTrimmer
from .flare.learner import ANALYTICS_WRITER, FedSMLearner
from .flare.persistor import FedSMModelPersistor
from .flare.round_costs import RoundCosts
from .flare.simulator_guard import SimulatorClientStartGuard
from .flare.workflow import FedSMController
from .job_config import CONFIG_FILES, package_code

DEFAULT_JOB = Path(__file__).resolve().parents[2] / "jobs" / "fedsm_prostate"
DEFAULT_LABEL_MAPPING = {"client_I2CVB": 0, "client_MSD": 1, "client_NCI_ISBI_3T": 2}
DEFAULT_DATA = "/tmp/nvflare/fedsm_data"
DEFAULT_TRAIN = TrainConfig(dataset_base_dir=f"{DEFAULT_DATA}/dataset_2D", datalist_json_path=f"{DEFAULT_DATA}/datalist_2D")
TRAIN_CONFIG = "config_train.json"
TASKS = {"train_task_name": "train", "validate_task_name": "validate"}
EVALUATE_TASK = "evaluate"  # FedSMController's and FedSMEvaluator's default evaluate_task_name
IDS = {"aggregator_id": "aggregator", "persistor_id": "persistor"}
# NVFlare server settings of the job: FedSM rounds are long, so a client may stay silent for minutes
SERVER_SETTINGS = {"server": {"heart_beat_timeout": 600, "task_request_interval": 0.5}}
# The run length is also written at the top of the server config: tools that read a job folder
# (result_stat) find it there even where FedJob leaves the workflow's argument out (at its default).
RUN_LENGTH = "num_rounds"
# FedSMController arguments the recipe sets itself; every other one is a `workflow` setting
RECIPE_OWNED = {"num_rounds", LABEL_MAPPING, *IDS, *TASKS}
# `section.key` settings (python -m fedsm.job_config --set) that are recipe arguments, not train or workflow keys
NAMED_SETTINGS = {"server.num_rounds": "num_rounds", "workflow.num_rounds": "num_rounds",
                  "server.soft_pull_lambda": "soft_pull_lambda", "server.resume_from": "resume_from",
                  "server.keep_states": "keep_states", f"workflow.{LABEL_MAPPING}": LABEL_MAPPING,
                  "meta.name": "name", "meta.min_clients": "min_clients"}


def _workflow_settings_model() -> type[BaseModel]:
    """A strict pydantic model of `FedSMController.__init__`'s arguments (less those the recipe sets), so a
    new argument of the workflow is a recipe setting, checked against its annotation, with no edit here."""
    fields = {name: (parameter.annotation, parameter.default)
              for name, parameter in inspect.signature(FedSMController.__init__).parameters.items()
              if name != "self" and name not in RECIPE_OWNED}
    return create_model("workflow", __config__=ConfigDict(strict=True, extra="forbid"), **fields)


WorkflowSettings = _workflow_settings_model()


class _Arguments(BaseModel):
    model_config = ConfigDict(strict=True, arbitrary_types_allowed=True)

    name: str = Field(min_length=1)
    client_id_label_mapping: dict[str, int] = Field(min_length=1)
    min_clients: int = Field(ge=1)
    num_rounds: int = Field(ge=1)
    soft_pull_lambda: float = Field(ge=0.0, le=1.0)
    train: TrainConfig
    workflow: dict[str, Any]
    resume_from: str
    keep_states: int = Field(ge=1)
    local_tensorboard: bool
    heap_trimming: bool
    bring_code: bool


def _validated(model: type[BaseModel], values: dict, prefix: str = "") -> BaseModel:
    """`model(**values)`; a ValueError naming each argument at fault and the value given."""
    try:
        return model(**values)
    except ValidationError as error:
        problems = [f"'{prefix}{'.'.join(str(part) for part in item['loc'])}': {item['msg']} (got {item['input']!r})"
                    for item in error.errors()]
        raise ValueError(f"FedSMRecipe argument {'; '.join(problems)}") from None


class JobFolderRecipe(Recipe):
    """A recipe that can also write its job as a folder of a chosen name."""

    def write_job(self, destination: str | Path) -> Path:
        """Export the job into the folder `destination` (replaced if it exists), whatever its name."""
        destination = Path(destination).resolve()
        destination.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".fedsm_export_", dir=destination.parent) as root:
            self.export(root)
            if destination.exists():
                shutil.rmtree(destination)
            (Path(root) / self.name).rename(destination)
        return destination


class FedSMRecipe(JobFolderRecipe):
    def __init__(
        self,
        *,
        name: str = "fedsm_prostate",
        client_id_label_mapping: dict[str, int] | None = None,
        min_clients: int = 2,
        num_rounds: int = 100,
        soft_pull_lambda: float = 0.7,
        train: TrainConfig | None = None,
        workflow: dict[str, Any] | None = None,
        resume_from: str = "",
        keep_states: int = 3,
        local_tensorboard: bool = False,
        heap_trimming: bool = True,
        bring_code: bool = True,
    ):
        """FedSM across the clients of `client_id_label_mapping`.

        Args:
            name: the job's name (and its folder's, when exported).
            client_id_label_mapping: client name -> selector label 0..K-1 (default: the three prostate sites).
            min_clients: clients NVFlare needs to start the job (meta.json); at most the mapping's clients.
            num_rounds: rounds of the run (a resumed run continues up to this number).
            soft_pull_lambda: SoftPull's weight of a client's own personalized model, in [0, 1].
            train: every key of config_train.json (default: `DEFAULT_TRAIN`, with `select_num_classes` the
                number of clients of the mapping).
            workflow: any other argument of `FedSMController` by name (`train_timeout`, `parallel_tasks`,
                `max_steps_ratio`, ...), checked against the type in its signature.
            resume_from: a FedSM state file to start from (the persistor's `resume_from`; README, Resuming).
            keep_states: FedSM state files the server keeps.
            local_tensorboard: clients also write their curves into their own app folders.
            heap_trimming: every process hands its freed heap back to the system each second (`HeapTrimmer`).
            bring_code: the job carries the `fedsm` code in `app/custom` (BYOC); False for sites that have the
                package installed and `fedsm.flare.` in their class allow list (docs/deployment.md).

        A value of the wrong type or out of range raises a ValueError naming its argument. Filters are added
        with the Recipe's own methods (`add_client_output_filter`, `add_server_input_filter`, ...); they must
        keep FedSM's arrays torch tensors (docs/deployment.md).
        """
        mapping = dict(DEFAULT_LABEL_MAPPING if client_id_label_mapping is None else client_id_label_mapping)
        if train is None:
            train = dataclasses.replace(DEFAULT_TRAIN, select_num_classes=max(len(mapping), 1))
        arguments = _validated(_Arguments, dict(
            name=name, client_id_label_mapping=mapping, min_clients=min_clients, num_rounds=num_rounds,
            soft_pull_lambda=soft_pull_lambda, train=train, workflow=dict(workflow or {}), resume_from=resume_from,
            keep_states=keep_states, local_tensorboard=local_tensorboard, heap_trimming=heap_trimming,
            bring_code=bring_code))
        self.train = TrainConfig.from_dict(arguments.train.as_dict(), source="FedSMRecipe argument 'train'")
        try:
            self.client_id_label_mapping = check_label_mapping(mapping, self.train.select_num_classes)
        except ValueError as error:
            raise ValueError(f"FedSMRecipe argument '{LABEL_MAPPING}' with train.select_num_classes="
                             f"{self.train.select_num_classes}: {error}") from None
        if min_clients > len(mapping):
            raise ValueError(f"FedSMRecipe argument 'min_clients' = {min_clients} is more than the "
                             f"{len(mapping)} clients of {LABEL_MAPPING}")
        owned = sorted(RECIPE_OWNED & set(arguments.workflow))
        if owned:
            raise ValueError(f"FedSMRecipe argument 'workflow' sets {owned}, which the recipe sets itself; "
                             "give num_rounds and client_id_label_mapping as recipe arguments")
        self.workflow = _validated(WorkflowSettings, arguments.workflow, prefix="workflow.").model_dump(
            exclude_unset=True)
        self.clients = list(self.client_id_label_mapping)
        self.num_rounds = num_rounds
        self.soft_pull_lambda = soft_pull_lambda
        self.min_clients = min_clients

        job = FedJob(name=name, min_clients=min_clients)
        job.to_server(SimulatorClientStartGuard(), id="simulator_client_start_guard")
        job.to_server(TBAnalyticsReceiver(tb_folder="tb_events"), id="tb_receiver")
        job.to_server(RoundCosts(), id="round_costs")
        job.to_server(FedSMModelPersistor(train_config_filename=TRAIN_CONFIG, resume_from=resume_from,
                                          keep_states=keep_states), id=IDS["persistor_id"])
        job.to_server(FedSMAggregator(soft_pull_lambda=soft_pull_lambda), id=IDS["aggregator_id"])
        self._controller = FedSMController(num_rounds=num_rounds, client_id_label_mapping=self.client_id_label_mapping,
                                           **IDS, **TASKS, **self.workflow)
        job.to_server(self._controller, id="fedsm")
        job.to_clients(FedSMLearner(train_config_filename=TRAIN_CONFIG, local_tensorboard=local_tensorboard, **TASKS),
                       tasks=list(TASKS.values()))
        job.to_clients(FedSMEvaluator(train_config_filename=TRAIN_CONFIG), tasks=[EVALUATE_TASK])
        job.to_clients(TBWriter(), id=ANALYTICS_WRITER)
        if heap_trimming:
            job.to_server(HeapTrimmer(), id="heap_trimmer")
            job.to_clients(HeapTrimmer(), id="heap_trimmer")
        job.to_clients(ConvertToFedEvent(events_to_convert=[ANALYTIC_EVENT_TYPE]), id="event_to_fed")
        self._staging = add_job_files(job, self.train, bring_code)
        super().__init__(job)
        self.add_server_config({**SERVER_SETTINGS, RUN_LENGTH: num_rounds})

    def add_quantization(self, quantization_type: str, tasks: tuple[str, ...] = tuple(TASKS.values())) -> None:
        """NVFlare's stock quantization both ways, with the Recipe's filter methods: the clients quantize their
        results and dequantize their tasks, the server the reverse (`blockwise8` needs CUDA; all need the
        `[quant]` extra, bitsandbytes)."""
        from nvflare.app_opt.pt.quantization.dequantizer import ModelDequantizer
        from nvflare.app_opt.pt.quantization.quantizer import ModelQuantizer

        self.add_client_output_filter(ModelQuantizer(quantization_type=quantization_type), tasks=list(tasks))
        self.add_client_input_filter(ModelDequantizer(), tasks=list(tasks))
        self.add_server_output_filter(ModelQuantizer(quantization_type=quantization_type), tasks=list(tasks))
        self.add_server_input_filter(ModelDequantizer(), tasks=list(tasks))

    def add_server_input_filter(self, filter: Filter, tasks: list[str] | None = None) -> None:
        """Add a filter of the clients' results on the server, and turn the workflow's tensor disk offload
        off: the filter runs on the received message before FedSM reads it, and needs its arrays in
        memory, not as references to files."""
        super().add_server_input_filter(filter, tasks)
        self._controller.tensor_disk_offload = False

    def process_env(self, env: ExecEnv) -> None:
        """Stop before deploying when the environment's clients are not all in the label mapping (a
        ProdEnv names none: its clients are the provisioned project's)."""
        clients = getattr(env, "clients", None)
        if clients is None and getattr(env, "num_clients", 0):
            clients = [f"site-{i}" for i in range(1, env.num_clients + 1)]  # the names SimEnv and PocEnv give
        unknown = [client for client in clients or [] if client not in self.client_id_label_mapping]
        if unknown:
            raise ValueError(f"clients {unknown} of the {type(env).__name__} are not in {LABEL_MAPPING} "
                             f"{self.client_id_label_mapping}; run with clients={self.clients} or pass a mapping "
                             "that names them")

    def files_differing_from(self, job_dir: str | Path) -> list[str]:
        """The config files (meta.json, app/config/*.json) of the job folder `job_dir` whose JSON differs from
        this recipe's export, or that only one of the two has."""
        job_dir = Path(job_dir)
        with tempfile.TemporaryDirectory(prefix="fedsm_export_") as root:
            exported = self.write_job(Path(root) / "job")
            names = {str(path.relative_to(folder)) for folder in (exported, job_dir)
                     for path in [folder / "meta.json", *(folder / "app" / "config").glob("*.json")] if path.is_file()}
            return sorted(name for name in names if not (exported / name).is_file() or not (job_dir / name).is_file()
                          or _read(exported / name) != _read(job_dir / name))

    @classmethod
    def from_settings(cls, settings: dict[str, Any], job_dir: str | Path | None = None,
                      **arguments: Any) -> "FedSMRecipe":
        """The recipe of the job folder `job_dir` (default: the recipe's defaults) with `{"section.key": value}`
        settings as `python -m fedsm.job_config --set` takes them: `train.KEY` a key of config_train.json,
        `workflow.KEY` an argument of FedSMController, and the recipe arguments `server.num_rounds`,
        `server.soft_pull_lambda`, `server.resume_from`, `server.keep_states`, `meta.name`, `meta.min_clients`.
        `arguments` are other FedSMRecipe arguments (`bring_code`)."""
        arguments = {**(job_arguments(job_dir) if job_dir is not None else {}), **arguments}
        train = arguments.pop("train", None) or DEFAULT_TRAIN.as_dict()
        workflow = arguments.pop("workflow", {})
        for dotted, value in settings.items():
            section, _, key = dotted.partition(".")
            if dotted in NAMED_SETTINGS:
                arguments[NAMED_SETTINGS[dotted]] = value
            elif section == "train" and key:
                train[key] = value
            elif section == "workflow" and key:
                workflow[key] = value
            else:
                raise ValueError(f"setting '{dotted}': expected train.KEY, workflow.KEY or one of "
                                 f"{sorted(NAMED_SETTINGS)}")
        mapping_set = any(NAMED_SETTINGS.get(dotted) == LABEL_MAPPING for dotted in settings)
        if mapping_set and "train.select_num_classes" not in settings:
            train["select_num_classes"] = len(arguments[LABEL_MAPPING])
        source = f"train settings of {job_dir or 'the recipe'}"
        return cls(train=TrainConfig.from_dict(train, source=source), workflow=workflow, **arguments)


def add_job_files(job: FedJob, train: TrainConfig, bring_code: bool) -> tempfile.TemporaryDirectory:
    """Ship config_train.json, and with `bring_code` the packaged `fedsm` code, to the server and the
    clients (FedJob never copies the components' modules one by one); the staging folder, which must
    live as long as the job."""
    staging = tempfile.TemporaryDirectory(prefix="fedsm_recipe_")
    train_file = Path(staging.name) / TRAIN_CONFIG
    train_file.write_text(json.dumps(train.as_dict(), indent=2) + "\n")
    custom = package_code(Path(staging.name)).parent
    job.set_app_packages(sorted(p.name for p in custom.iterdir() if (p / "__init__.py").is_file()))
    for add in (job.add_file_to_server, job.add_file_to_clients):
        if bring_code:
            add(str(custom))
        add(str(train_file), app_folder_type="config")
    return staging


class FedSMEvaluationRecipe(JobFolderRecipe):
    def __init__(self, *, models_dir: str, client_id_label_mapping: dict[str, int], train: TrainConfig,
                 clients: list[str] | None = None, select_threshold: float = DEFAULT_THRESHOLD,
                 name: str = "fedsm_evaluate", min_clients: int = 1, bring_code: bool = True):
        """The evaluate-only FedSM job: `clients` (default: the mapping's) score the best checkpoints of the
        finished run in `models_dir` (its server app folder) on their own test splits
        (`FedSMEvaluationController`); a client outside `client_id_label_mapping` is an unseen site.
        `train` gives the architectures and each site's data paths, as in the run. See `of_run`."""
        self.client_id_label_mapping = check_label_mapping(client_id_label_mapping, train.select_num_classes)
        self.clients = list(clients or self.client_id_label_mapping)
        job = FedJob(name=name, min_clients=min_clients)
        job.to_server(FedSMEvaluationController(models_dir=str(models_dir), client_id_label_mapping=dict(
            self.client_id_label_mapping), select_threshold=select_threshold, evaluate_task_name=EVALUATE_TASK),
                      id="fedsm_evaluation")
        job.to_clients(FedSMEvaluator(train_config_filename=TRAIN_CONFIG, evaluate_task_name=EVALUATE_TASK),
                       tasks=[EVALUATE_TASK])
        self._staging = add_job_files(job, train, bring_code)
        super().__init__(job)

    @classmethod
    def of_run(cls, models_dir: str | Path, **arguments: Any) -> "FedSMEvaluationRecipe":
        """The evaluation of the run whose server app folder is `models_dir`, with that run's training
        config and label mapping (its `config/` files); `arguments` as for the constructor."""
        config_dir = Path(models_dir) / "config"
        train = TrainConfig.from_file(config_dir / TRAIN_CONFIG)
        mapping = configured_label_mapping(_read(config_dir / "config_fed_server.json"), train.select_num_classes,
                                           source=str(config_dir / "config_fed_server.json"))
        return cls(models_dir=str(Path(models_dir).resolve()), client_id_label_mapping=mapping, train=train,
                   **arguments)


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: cannot read it: {error}") from error


def _class_path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def job_arguments(job_dir: str | Path) -> dict[str, Any]:
    """The FedSMRecipe arguments of a FedSM job folder the recipe exported: its name, clients, rounds,
    training config (as a dict), workflow settings. An argument the folder leaves at its default is absent."""
    job_dir = Path(job_dir)
    if not (job_dir / "meta.json").is_file():
        raise FileNotFoundError(f"{job_dir} is not an NVFlare job folder (no meta.json)")
    meta, server = _read(job_dir / CONFIG_FILES["meta"]), _read(job_dir / CONFIG_FILES["server"])
    components = {item.get("path"): item.get("args", {}) for item in server.get("components", [])}
    workflows = [item.get("args", {}) for item in server.get("workflows", [])
                 if item.get("path") == _class_path(FedSMController)]
    if len(workflows) != 1:
        raise ValueError(f"{job_dir / CONFIG_FILES['server']}: expected one {_class_path(FedSMController)} workflow")
    workflow = {key: value for key, value in workflows[0].items() if key not in (*IDS, *TASKS)}
    arguments = {"name": meta.get("name"), "min_clients": meta.get("min_clients"),
                 "train": _read(job_dir / CONFIG_FILES["train"])}
    if RUN_LENGTH in server:
        arguments["num_rounds"] = server[RUN_LENGTH]
    for key in ("num_rounds", LABEL_MAPPING):
        if key in workflow:
            arguments[key] = workflow.pop(key)
    arguments["workflow"] = workflow
    for cls, keys in ((FedSMAggregator, ("soft_pull_lambda",)), (FedSMModelPersistor, ("resume_from", "keep_states"))):
        arguments.update({key: value for key, value in components.get(_class_path(cls), {}).items() if key in keys})
    return {key: value for key, value in arguments.items() if value is not None}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write the FedSM job folder from FedSMRecipe's defaults.")
    parser.add_argument("--write-job", required=True, metavar="FOLDER",
                        help="job folder to (re)write, e.g. jobs/fedsm_prostate")
    print(FedSMRecipe().write_job(parser.parse_args(argv).write_job))


if __name__ == "__main__":
    main()
