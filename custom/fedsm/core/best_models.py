"""Best-model tracking: which checkpoints a round's validation metrics improve."""

from collections.abc import Mapping

import numpy as np

GLOBAL_METRIC = "val_metric_global_model"
PERSONALIZED_METRIC = "val_metric_person_model"
SELECTOR_METRIC = "val_metric_select_model"


def mean_metric(metrics: Mapping[str, Mapping[str, float]], sizes: Mapping[str, int], name: str) -> float:
    """Mean of metric `name` over clients, weighted by their validation set sizes; NaN when none."""
    pairs = [(m[name], sizes[c]) for c, m in metrics.items() if np.isfinite(m.get(name, np.nan)) and sizes[c] > 0]
    if not pairs:
        return float("nan")
    values, weights = zip(*pairs)
    return float(np.average(values, weights=weights))


def improves(best_metrics: dict[str, float], key: str, value: float) -> bool:
    """True (and records it) when `value` beats the best so far under `key`; NaN never improves."""
    if not np.isfinite(value):
        return False
    if key in best_metrics and value <= best_metrics[key]:
        return False
    best_metrics[key] = float(value)
    return True


def improved_models(
    metrics: Mapping[str, Mapping[str, float]], sizes: Mapping[str, int], best_metrics: dict[str, float]
) -> list[tuple[str, str | None, float]]:
    """The models whose validation improved this round, as `(model, client or None, metric)`, and
    record the new bests in `best_metrics`. Global and selector use the size-weighted mean over
    clients; each client's personalized model uses that client's own Dice."""
    improved = []
    for model, name in (("global", GLOBAL_METRIC), ("selector", SELECTOR_METRIC)):
        value = mean_metric(metrics, sizes, name)
        if improves(best_metrics, model, value):
            improved.append((model, None, value))
    for client, client_metrics in sorted(metrics.items()):
        value = client_metrics.get(PERSONALIZED_METRIC, float("nan"))
        if improves(best_metrics, f"personalized/{client}", value):
            improved.append(("personalized", client, value))
    return improved
