"""Sanity checks on a client's model update before it is aggregated."""

from collections.abc import Mapping

import numpy as np


def nonfinite_names(arrays: Mapping[str, np.ndarray]) -> list[str]:
    """Names of the arrays holding NaN or Inf."""
    return [name for name, array in arrays.items() if not np.isfinite(array).all()]


def shapes_of(arrays: Mapping[str, np.ndarray]) -> dict[str, tuple[int, ...]]:
    """Shape of every named array."""
    return {name: np.shape(array) for name, array in arrays.items()}
