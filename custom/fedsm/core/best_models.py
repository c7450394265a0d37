"""Best-model tracking: which checkpoints a round's validation metrics improve, under one of two rules.

| rule | global and selector score | round 0 | ties | final models |
|---|---|---|---|---|
| `median` (default) | median over sites | counts | selector: the more confident one | candidates |
| `reference` (as published) | mean weighted by training steps | skipped | first maximum kept | not candidates |

Each client's personalized model is its best when that client's own Dice improves, under both rules.
The median is the default because one site cannot move it outside the other sites' range: with the
weighted mean, a site that reports a perfect score once (a broken or hostile site) pins the global
and selector checkpoints to that round for the rest of the run, whatever its weight bound.
"""

from collections.abc import Mapping

import numpy as np

from ..tags import GLOBAL_METRIC, PERSONALIZED_METRIC, SELECTOR_CONFIDENCE, SELECTOR_METRIC
from .model_kinds import GLOBAL, PERSONALIZED, SELECTOR, personalized_key


def mean_metric(metrics: Mapping[str, Mapping[str, float]], weights: Mapping[str, float], name: str) -> float:
    """Mean of metric `name` over clients, weighted by `weights`; NaN when none."""
    pairs = [(m[name], weights[c]) for c, m in metrics.items()
             if np.isfinite(m.get(name, np.nan)) and weights.get(c, 0) > 0]
    if not pairs:
        return float("nan")
    values, pair_weights = zip(*pairs)
    return float(np.average(values, weights=pair_weights))


def median_metric(metrics: Mapping[str, Mapping[str, float]], name: str) -> float:
    """Median of metric `name` over the clients that report a finite value; NaN when none."""
    values = [m[name] for m in metrics.values() if np.isfinite(m.get(name, np.nan))]
    return float(np.median(values)) if values else float("nan")


def improves(best_metrics: dict[str, float], key: str, value: float, tie_break: float | None = None) -> bool:
    """True (and records it) when `value` beats the best so far under `key`; NaN never improves.

    An equal `value` improves only with a `tie_break` that beats the one recorded with the best
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


class MedianRule:
    """Scores by the median over sites; every validated model set is a candidate."""

    name = "median"

    def is_candidate(self, round_number: int, final: bool) -> bool:
        return True

    def score(self, metrics, weights, name: str) -> float:
        return median_metric(metrics, name)

    def selector_tie_break(self, metrics, weights) -> float | None:
        return median_metric(metrics, SELECTOR_CONFIDENCE)


class ReferenceRule:
    """The published example's rule: training-step-weighted means, round 0 and the final models left out,
    the first maximum kept."""

    name = "reference"

    def is_candidate(self, round_number: int, final: bool) -> bool:
        return round_number > 0 and not final

    def score(self, metrics, weights, name: str) -> float:
        return mean_metric(metrics, weights, name)

    def selector_tie_break(self, metrics, weights) -> float | None:
        return None


BEST_MODEL_RULES = {rule.name: rule for rule in (MedianRule(), ReferenceRule())}


def improved_models(
    metrics: Mapping[str, Mapping[str, float]], weights: Mapping[str, float], best_metrics: dict[str, float],
    rule=BEST_MODEL_RULES["median"], round_number: int = 1, final: bool = False,
) -> list[tuple[str, str | None, float]]:
    """The models whose validation improved this round, as `(model, client or None, metric)`, and
    record the new bests in `best_metrics`. `metrics` holds only the sites whose reply counted;
    `weights` are their (bounded) training steps, used by the `reference` rule."""
    if not rule.is_candidate(round_number, final):
        return []
    improved = []
    value = rule.score(metrics, weights, GLOBAL_METRIC)
    if improves(best_metrics, GLOBAL, value):
        improved.append((GLOBAL, None, value))
    value = rule.score(metrics, weights, SELECTOR_METRIC)
    if improves(best_metrics, SELECTOR, value, tie_break=rule.selector_tie_break(metrics, weights)):
        improved.append((SELECTOR, None, value))
    for client, client_metrics in sorted(metrics.items()):
        value = client_metrics.get(PERSONALIZED_METRIC, float("nan"))
        if improves(best_metrics, personalized_key(client), value):
            improved.append((PERSONALIZED, client, value))
    return improved
