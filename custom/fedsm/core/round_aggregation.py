"""One FedSM round on the server: check and stream in client updates, then build the next models."""

from collections.abc import Mapping

import numpy as np

from .adam_moments import MOMENT_KINDS, STEP_KEY, moment_key
from .model_set import ModelSet, Weights
from .soft_pull import soft_pull
from .update_checks import shapes_of, update_problem
from .weighted_average import WeightedAverage

UPDATE_PARTS = ("global", "selector", "selector_moments", "personalized")


def expected_moment_shapes(selector: Mapping[str, np.ndarray]) -> dict[str, tuple[int, ...]]:
    """The keys and shapes a client's selector Adam moments must have."""
    shapes: dict[str, tuple[int, ...]] = {STEP_KEY: ()}
    for name, weights in selector.items():
        for kind in MOMENT_KINDS:
            shapes[moment_key(kind, name)] = weights.shape
    return shapes


class RoundAggregator:
    """Aggregates one round: step-weighted means of the global and selector weight differences and of
    the selector's Adam moments (streamed, one accumulator each), and SoftPull of the personalized
    models of the clients that contributed. Clients that did not contribute keep their model."""

    def __init__(self, current: ModelSet, labels: Mapping[str, int], soft_pull_lambda: float) -> None:
        self.current = current
        self.labels = dict(labels)
        self.soft_pull_lambda = soft_pull_lambda
        self._global_diff = WeightedAverage()
        self._selector_diff = WeightedAverage()
        self._moments = WeightedAverage()
        self._personalized: dict[str, Weights] = {}
        self._global_shapes = shapes_of(current.global_model)
        self._selector_shapes = shapes_of(current.selector)
        self._moment_shapes = expected_moment_shapes(current.selector)

    @property
    def contributors(self) -> list[str]:
        return list(self._personalized)

    def accept(self, client: str, label: int, update: Mapping[str, Weights], weight: float) -> str | None:
        """Stream in one client's update; returns None, or the reason it was rejected (nothing is added)."""
        if client not in self.labels:
            return f"client '{client}' is not in client_id_label_mapping"
        if label != self.labels[client]:
            return f"selector label {label} is not the label of '{client}' ({self.labels[client]})"
        if client in self._personalized:
            return f"a second update from '{client}' in the same round"
        if not (np.isfinite(weight) and weight > 0):
            return f"invalid aggregation weight {weight}"
        missing = [part for part in UPDATE_PARTS if part not in update]
        if missing:
            return f"update lacks {missing}"
        expected = {
            "global": self._global_shapes,
            "selector": self._selector_shapes,
            "selector_moments": self._moment_shapes,
            "personalized": self._global_shapes,
        }
        for part, shapes in expected.items():
            problem = update_problem(update[part], shapes)
            if problem:
                return f"{part}: {problem}"
        self._global_diff.add(update["global"], weight)
        self._selector_diff.add(update["selector"], weight)
        self._moments.add(update["selector_moments"], weight)
        self._personalized[client] = dict(update["personalized"])
        return None

    def result(self) -> ModelSet:
        """The models of the next round. Raises if no client contributed."""
        if not self._personalized:
            raise RuntimeError("no valid client update in this round")
        personalized = dict(self.current.personalized)
        personalized.update(soft_pull(self._personalized, self.soft_pull_lambda))
        return ModelSet(
            global_model=_apply_diff(self.current.global_model, self._global_diff.result()),
            selector=_apply_diff(self.current.selector, self._selector_diff.result()),
            selector_moments=self._moments.result(),
            personalized=personalized,
            next_round=self.current.next_round + 1,
            best_metrics=dict(self.current.best_metrics),
        )


def _apply_diff(weights: Weights, mean_diff: Weights) -> Weights:
    """`weights + mean_diff`, computed into the diff's buffers (already fresh arrays, same dtype)."""
    for name, diff in mean_diff.items():
        np.add(diff, weights[name], out=diff)
    return mean_diff
