"""Bounds on one site's influence on a round: capped aggregation weights and norm outliers."""

from collections.abc import Mapping

import numpy as np

from .model_set import ModelSet
from .update_checks import nonfinite_names


def capped_weight(reported: int, declared: int | None) -> int:
    """The aggregation weight of an update: its local steps, at most the steps the site declared with
    its first accepted update (its training-set size per round), so a later claim cannot outweigh it."""
    return reported if declared is None else min(reported, declared)


def update_norm(*parts: Mapping[str, np.ndarray] | None) -> float:
    """L2 norm over every array of the given weight dicts (None parts are skipped)."""
    total = 0.0
    for part in parts:
        for array in (part or {}).values():
            total += float(np.vdot(array, array))
    return float(np.sqrt(total))


def norm_outliers(norms: Mapping[str, float], ratio: float) -> list[str]:
    """The clients whose update norm exceeds `ratio` times the median norm of the round (none when
    `ratio` <= 0 or fewer than three updates, where a median says nothing)."""
    if ratio <= 0 or len(norms) < 3:
        return []
    median = float(np.median(list(norms.values())))
    return sorted(client for client, norm in norms.items() if norm > ratio * median)


def nonfinite_arrays(models: ModelSet) -> list[str]:
    """Names (`part/array`) of the arrays of a model set holding NaN or Inf."""
    parts = {"global": models.global_model, "selector": models.selector, "selector_moments": models.selector_moments,
             **{f"personalized/{client}": weights for client, weights in models.personalized.items()}}
    return [f"{part}/{name}" for part, weights in parts.items() for name in nonfinite_names(weights)]
