"""Sanity checks on a client's model update before it is aggregated."""

import math
from collections.abc import Mapping

import numpy as np


def nonfinite_names(arrays: Mapping[str, np.ndarray]) -> list[str]:
    """Names of the arrays holding NaN or Inf."""
    return out_of_range_names(arrays, math.inf)


def shapes_of(arrays: Mapping[str, np.ndarray]) -> dict[str, tuple[int, ...]]:
    """Shape of every named array."""
    return {name: np.shape(array) for name, array in arrays.items()}


MAX_ABS_VALUE = 1e15  # with weights of at most 1e6 steps, sums of values and of their squares stay finite in float32


def out_of_range_names(arrays: Mapping[str, np.ndarray], limit: float = MAX_ABS_VALUE) -> list[str]:
    """Names of the arrays holding NaN, Inf or a value beyond +-`limit` (`limit` inf: NaN or Inf).

    Two reductions per array and no temporary (an `abs` first would write a copy as large as a 500 MB
    selector); NaN propagates through `min` and `max`.
    """
    return [name for name, array in arrays.items() if np.size(array) and not _within(array, limit)]


def _within(array: np.ndarray, limit: float) -> bool:
    low, high = np.min(array), np.max(array)
    return bool(math.isfinite(low) and math.isfinite(high) and -limit <= low and high <= limit)
