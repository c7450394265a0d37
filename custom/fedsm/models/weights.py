"""Moving named weights between torch modules and NumPy dicts."""

from collections.abc import Mapping

import warnings

import numpy as np
import torch


def numpy_to_tensor(array: np.ndarray) -> torch.Tensor:
    """A tensor sharing memory with `array`; read-only arrays (as received from NVFlare) are fine
    because callers only read them or copy them into a module."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(np.asarray(array))


def get_weights(model: torch.nn.Module) -> dict[str, np.ndarray]:
    """The model's state as NumPy arrays (CPU; no copy when the model is on the CPU)."""
    return {name: tensor.detach().cpu().numpy() for name, tensor in model.state_dict().items()}


def set_weights(model: torch.nn.Module, weights: Mapping[str, np.ndarray]) -> None:
    """Load NumPy weights into `model` (copied into its own tensors); names and shapes must match."""
    model.load_state_dict({name: numpy_to_tensor(array) for name, array in weights.items()}, strict=True)


def weight_difference(new: Mapping[str, np.ndarray], old: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """`new - old`, name by name, in each array's dtype, written into `new`'s buffers.

    Callers pass trained weights they no longer need as such (views of a model whose weights are
    replaced by the next round's before any use), so no memory is allocated; `old` may be read-only,
    as arrays received from NVFlare are.
    """
    return {name: np.subtract(array, old[name], out=array) for name, array in new.items()}
