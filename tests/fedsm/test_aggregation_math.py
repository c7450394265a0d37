import numpy as np
import pytest

from fedsm.core.soft_pull import soft_pull
from fedsm.core.weighted_average import WeightedAverage, weighted_average


def _w(value, dtype=np.float32):
    return {"a": np.full((2, 2), value, dtype=dtype), "b": np.array([value, 2 * value], dtype=dtype)}


def test_soft_pull_matches_hand_computation():
    models = {"x": _w(1.0), "y": _w(2.0), "z": _w(4.0)}
    pulled = soft_pull(models, 0.7)
    # x: 0.7*1 + 0.15*(2+4) = 1.6 ; y: 0.7*2 + 0.15*(1+4) = 2.15 ; z: 0.7*4 + 0.15*3 = 3.25
    np.testing.assert_allclose(pulled["x"]["a"], 1.6, rtol=1e-6)
    np.testing.assert_allclose(pulled["y"]["a"], 2.15, rtol=1e-6)
    np.testing.assert_allclose(pulled["z"]["b"], [3.25, 6.5], rtol=1e-6)


def test_soft_pull_lambda_one_keeps_local_models():
    models = {"x": _w(1.0), "y": _w(3.0)}
    pulled = soft_pull(models, 1.0)
    np.testing.assert_array_equal(pulled["x"]["a"], models["x"]["a"])
    np.testing.assert_array_equal(pulled["y"]["b"], models["y"]["b"])


def test_soft_pull_lambda_one_over_k_gives_plain_average():
    models = {"x": _w(1.0), "y": _w(2.0), "z": _w(6.0)}
    pulled = soft_pull(models, 1.0 / 3.0)
    for client in models:
        np.testing.assert_allclose(pulled[client]["a"], 3.0, rtol=1e-6)


def test_soft_pull_keeps_dtype_and_rejects_bad_lambda():
    pulled = soft_pull({"x": _w(1.0), "y": _w(2.0)}, 0.5)
    assert pulled["x"]["a"].dtype == np.float32
    with pytest.raises(ValueError, match="soft_pull_lambda"):
        soft_pull({"x": _w(1.0)}, 1.5)


def test_weighted_average_by_steps():
    result = weighted_average([(_w(1.0), 1), (_w(4.0), 3)])
    np.testing.assert_allclose(result["a"], (1 * 1 + 4 * 3) / 4, rtol=1e-6)


def test_weighted_average_keeps_float32_with_numpy_float64_weights():
    average = WeightedAverage()
    average.add(_w(1.0), np.float64(2.0))
    average.add(_w(2.0), np.float64(1.0))
    result = average.result()
    assert all(array.dtype == np.float32 for array in result.values())
    np.testing.assert_allclose(result["b"], [4 / 3, 8 / 3], rtol=1e-6)


def test_weighted_average_rejects_mismatched_contributions():
    average = WeightedAverage()
    average.add(_w(1.0), 1)
    with pytest.raises(ValueError, match="'a'.*differs"):
        average.add({"a": np.zeros((3,), np.float32)}, 1)
    with pytest.raises(ValueError, match="'b': float64.*differs"):
        average.add({"b": np.zeros(2, np.float64)}, 1)
    with pytest.raises(ValueError, match="> 0"):
        average.add(_w(1.0), 0)


def test_weighted_average_averages_each_name_over_the_contributions_holding_it():
    """As NVFlare's WeightedAggregationHelper: a name a filter dropped from one contribution is the
    mean of the others; a name only one contribution holds is that contribution's array."""
    result = weighted_average([(_w(1.0), 1), ({"a": np.full((2, 2), 4.0, np.float32)}, 3),
                               ({"c": np.ones(1, np.float32)}, 2)])
    np.testing.assert_allclose(result["a"], (1 * 1 + 4 * 3) / 4, rtol=1e-6)
    np.testing.assert_allclose(result["b"], [1.0, 2.0], rtol=1e-6)
    np.testing.assert_array_equal(result["c"], [1.0])


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.bool_])
def test_weighted_average_rejects_non_float_arrays(dtype):
    average = WeightedAverage()
    average.add(_w(1.0), 1)
    with pytest.raises(ValueError, match=f"'n': dtype {np.dtype(dtype)} is not a float dtype"):
        average.add({"n": np.array([2], dtype)}, 1)
