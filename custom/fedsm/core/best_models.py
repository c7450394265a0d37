"""Best-model tracking: which checkpoints a round's validation metrics improve."""

from collections.abc import Mapping

import numpy as np

from ..tags import GLOBAL_METRIC, PERSONALIZED_METRIC, SELECTOR_CONFIDENCE, SELECTOR_METRIC


def mean_metric(metrics: Mapping[str, Mapping[str, float]], sizes: Mapping[str, int], name: str) -> float:
    """Mean of metric `name` over clients, weighted by their validation set sizes; NaN when none."""
    pairs = [(m[name], sizes[c]) for c, m in metrics.items() if np.isfinite(m.get(name, np.nan)) and sizes[c] > 0]
    if not pairs:
        return float("nan")
    values, weights = zip(*pairs)
    return float(np.average(values, weights=weights))


def improves(best_metrics: dict[str, float], key: str, value: float, tie_break: float | None = None) -> bool:
    """True (and records it) when `value` beats the best so far under `key`; NaN never improves.

    With `tie_break`, an equal `value` improves when `tie_break` beats the one recorded with the best
    (kept under `key + "/tie_break"`).
    """
    if not np.isfinite(value):
        return False
    tie_key = f"{key}/tie_break"
    if key in best_metrics:
        if value < best_metrics[key]:
            return False
        if value == best_metrics[key] and (tie_break is None or not tie_break > best_metrics.get(tie_key, -np.inf)):
            return False
    best_metrics[key] = float(value)
    if tie_break is not None:
        best_metrics[tie_key] = float(tie_break)
    return True


def improved_models(
    metrics: Mapping[str, Mapping[str, float]], sizes: Mapping[str, int], best_metrics: dict[str, float]
) -> list[tuple[str, str | None, float]]:
    """The models whose validation improved this round, as `(model, client or None, metric)`, and
    record the new bests in `best_metrics`. Global and selector use the size-weighted mean over
    clients; each client's personalized model uses that client's own Dice. Selector accuracy ties
    (frequent once it reaches 100%) go to the more confident selector."""
    improved = []
    value = mean_metric(metrics, sizes, GLOBAL_METRIC)
    if improves(best_metrics, "global", value):
        improved.append(("global", None, value))
    value = mean_metric(metrics, sizes, SELECTOR_METRIC)
    if improves(best_metrics, "selector", value, tie_break=mean_metric(metrics, sizes, SELECTOR_CONFIDENCE)):
        improved.append(("selector", None, value))
    for client, client_metrics in sorted(metrics.items()):
        value = client_metrics.get(PERSONALIZED_METRIC, float("nan"))
        if improves(best_metrics, f"personalized/{client}", value):
            improved.append(("personalized", client, value))
    return improved
