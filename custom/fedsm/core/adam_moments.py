"""Adam moments keyed by parameter name: extract from, and load into, a torch optimizer; average."""

from collections.abc import Iterable, Mapping

import numpy as np
import torch

from .weighted_average import WeightedAverage

MOMENT_KINDS = ("exp_avg", "exp_avg_sq")
STEP_KEY = "step"


def moment_key(kind: str, param_name: str) -> str:
    """Flat key of one moment tensor, e.g. `exp_avg/features.0.weight`."""
    return f"{kind}/{param_name}"


def extract_adam_moments(
    optimizer: torch.optim.Optimizer, named_parameters: Iterable[tuple[str, torch.nn.Parameter]]
) -> dict[str, np.ndarray]:
    """Adam's `exp_avg` and `exp_avg_sq` of every parameter, keyed by parameter name, plus the step count.

    Returns CPU arrays that share memory with the optimizer state where possible (no copy on CPU).
    Parameters with no state yet (never stepped) are left out.
    """
    moments: dict[str, np.ndarray] = {}
    step = None
    for name, param in named_parameters:
        state = optimizer.state.get(param)
        if not state:
            continue
        for kind in MOMENT_KINDS:
            moments[moment_key(kind, name)] = state[kind].detach().cpu().numpy()
        step = float(state[STEP_KEY])
    if step is not None:
        moments[STEP_KEY] = np.asarray(step, dtype=np.float32)
    return moments


def _as_state_tensor(value: np.ndarray, param: torch.nn.Parameter, share_memory: bool) -> torch.Tensor:
    """`value` as optimizer state for `param`: with `share_memory`, the array itself when it is a
    writable CPU array of the parameter's dtype (Adam then updates it in place), else a copy."""
    if share_memory and param.device.type == "cpu" and value.flags.writeable and value.flags.c_contiguous:
        tensor = torch.from_numpy(value)
        if tensor.dtype == param.dtype:
            return tensor
    return torch.tensor(value, dtype=param.dtype, device=param.device)


def load_adam_moments(
    optimizer: torch.optim.Optimizer,
    named_parameters: Iterable[tuple[str, torch.nn.Parameter]],
    moments: Mapping[str, np.ndarray],
    share_memory: bool = False,
) -> None:
    """Replace the optimizer state by `moments` (as made by `extract_adam_moments`), matched by name.

    `share_memory=True` hands the arrays over to the optimizer instead of copying them (for moments
    nobody else uses, such as those just received), which saves their size in memory.

    An empty mapping clears the state (a fresh Adam). Otherwise every parameter needs both moments
    with its shape; a missing, extra or misshaped key raises a KeyError/ValueError naming it.
    """
    named_parameters = list(named_parameters)
    optimizer.state.clear()
    if not moments:
        return
    expected = {moment_key(kind, name) for name, _ in named_parameters for kind in MOMENT_KINDS} | {STEP_KEY}
    missing = sorted(expected - moments.keys())
    extra = sorted(moments.keys() - expected)
    if missing or extra:
        raise KeyError(f"Adam moments do not match the model: missing {missing[:5]}, unexpected {extra[:5]}")
    step = torch.tensor(float(moments[STEP_KEY]), dtype=torch.float32)
    for name, param in named_parameters:
        state = {STEP_KEY: step.clone()}
        for kind in MOMENT_KINDS:
            value = np.asarray(moments[moment_key(kind, name)])
            if value.shape != tuple(param.shape):
                raise ValueError(f"Adam {kind} of '{name}' has shape {value.shape}, parameter has {tuple(param.shape)}")
            state[kind] = _as_state_tensor(value, param, share_memory)
        optimizer.state[param] = state


def average_adam_moments(contributions: Iterable[tuple[Mapping[str, np.ndarray], float]]) -> dict[str, np.ndarray]:
    """Weighted mean of several clients' Adam moments (and step counts), name by name."""
    average = WeightedAverage()
    for moments, weight in contributions:
        average.add(moments, weight)
    return average.result()
