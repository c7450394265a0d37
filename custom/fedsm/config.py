"""The training config of the job (`config_train.json`): keys, defaults, validation, path resolution;
and a job folder's configs read and checked together (`read_job_configs`)."""

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from .core.label_mapping import configured_label_mapping
from .job_config import CONFIG_FILES
from .models.networks import SELECTORS
from .selector_training import selector_training


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of local training; every field is a key of `config_train.json`."""

    dataset_base_dir: str
    datalist_json_path: str
    learning_rate: float = 1e-3
    learning_rate_select: float = 1e-3
    local_epochs: int = 1
    selector_local_epochs: int = 1
    batch_size: int = 1
    selector_batch_size: int = 16
    image_size: int = 256
    selector: str = "vgg11"
    selector_training: str = "client_adam_on_server"
    select_num_classes: int = 3
    cache_dataset: float = 1.0
    num_workers: int = 0
    torch_threads: int = 0
    seed: int = 0
    client_state_dir: str = ""  # client optimizers and best metric, "" = the app folder; see README "Resuming"
    amp: bool = False  # bfloat16 autocast of forward passes, CUDA only (changes numerics)
    channels_last: bool = False  # channels_last memory format of models and batches, CUDA only

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config_train.json") -> "TrainConfig":
        """Validate `values` (types, ranges, unknown keys) and build the config; errors name `source`."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(fields))
        if unknown:
            raise ValueError(f"{source}: unknown keys {unknown}; known keys are {sorted(fields)}")
        missing = [n for n, f in fields.items() if f.default is dataclasses.MISSING and n not in values]
        if missing:
            raise ValueError(f"{source}: missing required keys {missing}")
        kwargs = {}
        for name, value in values.items():
            kind = fields[name].type
            if not _is_json_of(kind, value):
                expected = "true or false" if kind is bool else kind.__name__
                raise ValueError(f"{source}: '{name}' must be {expected}, got {value!r}")
            kwargs[name] = kind(value)
        config = cls(**kwargs)
        config._check_ranges(source)
        return config

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "TrainConfig":
        try:
            values = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise ValueError(f"{path}: cannot read training config: {error}") from error
        return cls.from_dict(values, source=str(path))

    def _check_ranges(self, source: str) -> None:
        positive = ("learning_rate", "learning_rate_select", "local_epochs", "selector_local_epochs",
                    "batch_size", "selector_batch_size", "image_size", "select_num_classes")
        for name in positive:
            if not getattr(self, name) > 0:
                raise ValueError(f"{source}: '{name}' must be > 0, got {getattr(self, name)}")
        try:
            problem = selector_training(self.selector_training).check_config(self.selector_local_epochs)
        except ValueError as error:
            problem = str(error)
        if problem:
            raise ValueError(f"{source}: {problem}")
        if self.selector not in SELECTORS:
            raise ValueError(f"{source}: 'selector' must be one of {SELECTORS}, got '{self.selector}'")
        if not 0.0 <= self.cache_dataset <= 1.0:
            raise ValueError(f"{source}: 'cache_dataset' is a cache rate in [0, 1], got {self.cache_dataset}")
        for name in ("num_workers", "torch_threads"):
            if getattr(self, name) < 0:
                raise ValueError(f"{source}: '{name}' must be >= 0, got {getattr(self, name)}")

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _is_json_of(kind: type, value: Any) -> bool:
    """Whether a JSON value is of a field's type: only true/false are bools, an integer is also a float."""
    if kind is bool or isinstance(value, bool):
        return kind is bool and isinstance(value, bool)
    return isinstance(value, (int, float) if kind is float else kind)


def resolve_path(value: str, setting: str) -> Path:
    """Expand `~` and `$VARS` in a configured path; an unset variable is an error naming the setting."""
    expanded = os.path.expanduser(os.path.expandvars(value))
    if "$" in expanded:
        raise ValueError(f"'{setting}' = '{value}' uses an environment variable that is not set")
    return Path(expanded)


@dataclasses.dataclass(frozen=True)
class JobConfigs:
    """A FedSM job folder's configs, checked: the training config, the server config (as JSON) and
    the server's label mapping (client name -> selector label)."""

    train: TrainConfig
    server: dict[str, Any]
    label_mapping: dict[str, int]


def read_job_configs(job_dir: str | os.PathLike, described_as: str | None = None) -> JobConfigs:
    """The training and server configs of the job folder `job_dir`, checked; an error names the file
    at fault as `<file> of <described_as>` (default: the folder; e.g. the source job and its overrides
    where `job_dir` is a derived copy)."""
    job_dir = Path(job_dir)
    name = described_as or str(job_dir)
    loaded = {}
    for section in ("train", "server"):
        try:
            loaded[section] = json.loads((job_dir / CONFIG_FILES[section]).read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise ValueError(f"{CONFIG_FILES[section]} of {name}: cannot read it: {error}") from error
    train = TrainConfig.from_dict(loaded["train"], source=f"{CONFIG_FILES['train']} of {name}")
    mapping = configured_label_mapping(loaded["server"], train.select_num_classes,
                                       source=f"{CONFIG_FILES['server']} of {name}")
    return JobConfigs(train, loaded["server"], mapping)
