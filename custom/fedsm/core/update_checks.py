"""Sanity checks on a client's model update before it is aggregated."""

from collections.abc import Mapping

import numpy as np


def nonfinite_names(arrays: Mapping[str, np.ndarray]) -> list[str]:
    """Names of the arrays holding NaN or Inf."""
    return [name for name, array in arrays.items() if not np.isfinite(array).all()]


def shapes_of(arrays: Mapping[str, np.ndarray]) -> dict[str, tuple[int, ...]]:
    """Shape of every named array."""
    return {name: np.shape(array) for name, array in arrays.items()}


def update_problem(arrays: Mapping[str, np.ndarray], expected: Mapping[str, tuple[int, ...]]) -> str | None:
    """Why `arrays` cannot be aggregated with a model of `expected` shapes, or None when it can.

    Checks, in order: missing or unexpected names, shapes, NaN/Inf values.
    """
    missing = sorted(expected.keys() - arrays.keys())
    if missing:
        return f"missing parameters {missing[:5]}{' ...' if len(missing) > 5 else ''}"
    extra = sorted(arrays.keys() - expected.keys())
    if extra:
        return f"unexpected parameters {extra[:5]}{' ...' if len(extra) > 5 else ''}"
    for name, shape in expected.items():
        if np.shape(arrays[name]) != tuple(shape):
            return f"'{name}' has shape {np.shape(arrays[name])}, expected {tuple(shape)}"
    bad = nonfinite_names(arrays)
    if bad:
        return f"NaN/Inf values in {bad[:5]}{' ...' if len(bad) > 5 else ''}"
    return None
