"""A client's own training state across runs: its optimizers, the round they belong to, its best metrics.

The server's `fedsm_state.pt` holds every model the server sends, but each client also keeps state of
its own between rounds: the Adam state of its global and personalized UNets and its best-personalized
tracking. This module saves that state after each train task and decides whether a new run may use it:
only when it belongs to the round just before the run's first task. Also: copying files from an
earlier run's folder into a new one (best checkpoints), atomically and without overwriting.
"""

import dataclasses
import os
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from ..config import resolve_path
from .atomic import atomic_path
from .checkpoint import CHECKPOINT_MODE, save_checkpoint

CLIENT_STATE_FILENAME = "client_state.pt"


@dataclasses.dataclass
class ClientState:
    """`round`: the round of the last train task; `optimizers`: `state_dict()` per optimizer name."""

    round: int
    optimizers: dict[str, dict[str, Any]]
    best_metrics: dict[str, float]


@dataclasses.dataclass(frozen=True)
class Restore:
    """What the first task of a run does with the saved state: `state` to continue (None: start fresh),
    and why (`warning`: a state file is there but cannot be used)."""

    state: ClientState | None
    message: str
    warning: bool = False


def client_state_dir(configured: str, app_root: str | os.PathLike, client: str) -> Path:
    """The folder of a client's state: its app folder when `configured` is empty, else `<configured>/<client>`
    (one subfolder per client, so simulator clients configured with the same path do not collide)."""
    if not configured:
        return Path(app_root)
    return resolve_path(configured, "client_state_dir") / client


def save_client_state(folder: str | os.PathLike, round_number: int, optimizers: Mapping[str, torch.optim.Optimizer],
                      best_metrics: Mapping[str, float]) -> Path:
    """Write the state after the train task of `round_number` to `folder/client_state.pt`: each optimizer's
    `state_dict()` and the best metrics; atomically, mode 0600, tensors only (loads with weights_only)."""
    path = Path(folder) / CLIENT_STATE_FILENAME
    save_checkpoint(path, {"round": int(round_number),
                           "optimizers": {name: optimizer.state_dict() for name, optimizer in optimizers.items()},
                           "best_metrics": {k: float(v) for k, v in best_metrics.items()}})
    return path


def _read(path: Path) -> ClientState:
    content = torch.load(path, map_location="cpu", weights_only=True)
    return ClientState(round=int(content["round"]), optimizers=dict(content["optimizers"]),
                       best_metrics={k: float(v) for k, v in content["best_metrics"].items()})


def _check_fits(name: str, saved: Mapping[str, Any], optimizer: torch.optim.Optimizer) -> None:
    """Raise ValueError unless `saved` (an Adam `state_dict`) has the groups and tensor shapes of `optimizer`
    (torch checks the group sizes on load, not the shapes of the state tensors)."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    groups = saved["param_groups"]
    if [len(g["params"]) for g in groups] != [len(g["params"]) for g in optimizer.param_groups]:
        raise ValueError(f"optimizer '{name}' has other parameter groups than the model")
    for index, param_state in saved["state"].items():
        for key, value in param_state.items():
            if value.dim() > 0 and tuple(value.shape) != tuple(params[int(index)].shape):
                raise ValueError(f"optimizer '{name}': {key} of parameter {index} has shape {tuple(value.shape)}, "
                                 f"the parameter {tuple(params[int(index)].shape)}")


def restorable_state(folder: str | os.PathLike, task_round: int,
                     optimizers: Mapping[str, torch.optim.Optimizer]) -> Restore:
    """The saved state of `folder` if a run whose first task is of round `task_round` continues it (the
    state is of round `task_round - 1` and fits `optimizers`), else none; and why, for the log.
    Nothing is changed: load it with `apply_client_state`."""
    path = Path(folder) / CLIENT_STATE_FILENAME
    if not path.exists():
        return Restore(None, f"no client state at {path}: starting with fresh optimizers")
    try:
        state = _read(path)
        for name, optimizer in optimizers.items():
            _check_fits(name, state.optimizers[name], optimizer)
    except Exception as error:  # unreadable, truncated, foreign or misshaped: never start from half of it
        return Restore(None, f"cannot use client state {path} ({type(error).__name__}: {error}): starting "
                             "with fresh optimizers", warning=True)
    if state.round != task_round - 1:
        return Restore(None, f"client state {path} is of round {state.round}, but this run starts at round "
                             f"{task_round} (it continues round {task_round - 1}): starting with fresh optimizers")
    return Restore(state, f"restored client state of round {state.round} from {path}: optimizers "
                          f"{sorted(optimizers)}, best metrics {state.best_metrics}")


def apply_client_state(state: ClientState, optimizers: Mapping[str, torch.optim.Optimizer]) -> None:
    """Load the saved optimizer states (checked by `restorable_state`) into `optimizers`."""
    for name, optimizer in optimizers.items():
        optimizer.load_state_dict(state.optimizers[name])


def copy_missing(source: str | os.PathLike, target: str | os.PathLike, names: Iterable[str]) -> list[str]:
    """Copy each file `names` from folder `source` into folder `target` where `target` lacks it and
    `source` has it, atomically with mode 0600; returns the names copied."""
    source, target = Path(source), Path(target)
    if source.resolve() == target.resolve():
        return []
    copied = []
    for name in names:
        if (source / name).is_file() and not (target / name).exists():
            with atomic_path(target / name, CHECKPOINT_MODE) as tmp:
                shutil.copyfile(source / name, tmp)
            copied.append(name)
    return copied
