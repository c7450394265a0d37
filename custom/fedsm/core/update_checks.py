"""Sanity checks on a client's model update before it is aggregated."""

from collections.abc import Mapping

import numpy as np


def nonfinite_names(arrays: Mapping[str, np.ndarray]) -> list[str]:
    """Names of the arrays holding NaN or Inf."""
    return [name for name, array in arrays.items() if not np.isfinite(array).all()]


def shapes_of(arrays: Mapping[str, np.ndarray]) -> dict[str, tuple[int, ...]]:
    """Shape of every named array."""
    return {name: np.shape(array) for name, array in arrays.items()}


MAX_ABS_VALUE = 1e15  # with weights of at most 1e6 steps, sums of values and of their squares stay finite in float32


def out_of_range_names(arrays: Mapping[str, np.ndarray], limit: float = MAX_ABS_VALUE) -> list[str]:
    """Names of the arrays holding NaN, Inf or a value beyond +-`limit` (one pass per array)."""
    return [name for name, array in arrays.items()
            if np.size(array) and not np.max(np.abs(array)) <= limit]
