"""Checkpoints: nested dicts of torch tensors and plain values, written atomically, loaded safely."""

import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.model_kinds import GLOBAL, PERSONALIZED, SELECTOR, SELECTOR_MOMENTS
from ..core.model_set import ModelSet
from ..models.weights import numpy_to_tensor
from .atomic import atomic_path


STATE_FILENAME = "fedsm_state.pt"  # the server's whole model set, the resume point
CHECKPOINT_MODE = 0o600  # model weights are site data: readable by their owner only, whatever the umask


def best_checkpoint_name(model: str, client: str | None = None) -> str:
    """File name of a best checkpoint: `best_global_model.pt`, `best_selector_model.pt`,
    `best_personalized_model_<client>.pt` (model IDs and client names live in separate namespaces)."""
    return f"best_{model}_model_{client}.pt" if client else f"best_{model}_model.pt"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read; the message names the file."""


def _to_torch(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return numpy_to_tensor(value)
    if isinstance(value, dict):
        return {key: _to_torch(item) for key, item in value.items()}
    return value


def _to_numpy(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.numpy()
    if isinstance(value, dict):
        return {key: _to_numpy(item) for key, item in value.items()}
    return value


def save_checkpoint(path: str | os.PathLike, content: dict[str, Any]) -> None:
    """Save nested dicts of NumPy arrays (stored as tensors, no copy) and plain values, atomically,
    as a file of mode 0600."""
    with atomic_path(path, CHECKPOINT_MODE) as tmp:
        torch.save(_to_torch(content), tmp)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint with `weights_only=True` (never executes code); tensors come back as NumPy."""
    path = Path(path)
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise CheckpointError(f"cannot load checkpoint {path}: {error}") from error
    if not isinstance(content, dict):
        raise CheckpointError(f"checkpoint {path} does not hold a dict")
    return _to_numpy(content)


def rotated_name(state_name: str, next_round: int) -> str:
    """`fedsm_state.pt` -> `fedsm_state.r00012.pt`: the state saved before round 12."""
    stem, dot, suffix = state_name.rpartition(".")
    return f"{stem}.r{next_round:05d}.{suffix}" if dot else f"{state_name}.r{next_round:05d}"


def rotated_states(folder: Path, state_name: str) -> list[Path]:
    """The rotated states of `state_name` in `folder`, newest first."""
    stem, _, suffix = state_name.rpartition(".")
    return sorted(folder.glob(f"{stem}.r[0-9][0-9][0-9][0-9][0-9].{suffix}"), reverse=True)


def save_rotated_state(folder: Path, state_name: str, content: dict[str, Any], next_round: int, keep: int) -> Path:
    """Save a state as its own rotated file, make `state_name` that newest state (a hard link, or a copy
    where links are not possible; replaced atomically), and delete all but the newest `keep` rotated
    states, so a poisoned or truncated save never destroys the only resume point."""
    rotated = folder / rotated_name(state_name, next_round)
    save_checkpoint(rotated, content)
    with atomic_path(folder / state_name) as tmp:
        tmp.unlink()
        try:
            os.link(rotated, tmp)
        except OSError:
            shutil.copy2(rotated, tmp)
    for old in rotated_states(folder, state_name)[max(keep, 1):]:
        old.unlink(missing_ok=True)
    return folder / state_name


def model_set_to_checkpoint(models: ModelSet) -> dict[str, Any]:
    return {
        GLOBAL: models.global_model,
        SELECTOR: models.selector,
        SELECTOR_MOMENTS: models.selector_moments,
        PERSONALIZED: models.personalized,
        "next_round": models.next_round,
        "best_metrics": models.best_metrics,
        "norm_history": models.norm_history,
    }


def model_set_from_checkpoint(content: dict[str, Any], path: str | os.PathLike) -> ModelSet:
    try:
        return ModelSet(
            global_model=content[GLOBAL],
            selector=content[SELECTOR],
            selector_moments=content[SELECTOR_MOMENTS],
            personalized=content[PERSONALIZED],
            next_round=int(content["next_round"]),
            best_metrics=dict(content["best_metrics"]),
            norm_history={part: [float(v) for v in values] for part, values in content.get("norm_history", {}).items()},
        )
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"checkpoint {path} is not a FedSM model set: missing or bad {error}") from error
