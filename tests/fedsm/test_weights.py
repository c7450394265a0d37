"""Moving weights between torch modules and NumPy, and the in-place weight difference."""

import numpy as np
import torch

from fedsm.models.weights import get_weights, set_weights, weight_difference


def test_weight_difference_is_written_over_the_new_weights_keeping_dtypes():
    new = {"a": np.array([3.0, 5.0], dtype=np.float32), "b": np.array([[2.5]], dtype=np.float64)}
    old = {"a": np.array([1.0, 7.0], dtype=np.float32), "b": np.array([[0.5]], dtype=np.float64)}
    old["a"].flags.writeable = False  # as received from NVFlare
    buffers = {name: array for name, array in new.items()}
    diff = weight_difference(new, old)
    np.testing.assert_array_equal(diff["a"], [2.0, -2.0])
    np.testing.assert_array_equal(diff["b"], [[2.0]])
    assert all(diff[name] is buffers[name] for name in diff)
    assert diff["a"].dtype == np.float32 and diff["b"].dtype == np.float64
    np.testing.assert_array_equal(old["a"], [1.0, 7.0])


def test_get_weights_shares_memory_and_set_weights_copies():
    model = torch.nn.Linear(3, 2)
    weights = get_weights(model)
    weights["bias"][:] = 4.0
    assert torch.equal(model.bias.detach(), torch.full((2,), 4.0))
    received = {name: np.full_like(array, 1.5) for name, array in weights.items()}
    set_weights(model, received)
    received["weight"][:] = 0.0
    assert torch.equal(model.weight.detach(), torch.full((2, 3), 1.5))
