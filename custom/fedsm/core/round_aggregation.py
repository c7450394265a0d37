"""One FedSM round on the server: check and stream in client updates, then build the next models."""

from collections.abc import Mapping

import numpy as np

from .model_set import ModelSet, Weights
from .selector_update import make_selector_update
from .soft_pull import soft_pull
from .update_checks import shapes_of, update_problem
from .weighted_average import WeightedAverage


class RoundAggregator:
    """Aggregates one round: the step-weighted mean of the global weight differences, the selector
    update (see `selector_update`), both streamed (one accumulator each, no client's copy kept), and
    SoftPull of the personalized models of the clients that contributed. Clients that did not
    contribute keep their personalized model."""

    def __init__(self, current: ModelSet, labels: Mapping[str, int], soft_pull_lambda: float,
                 selector_training: str = "client_adam", selector_lr: float = 1e-3) -> None:
        self.current = current
        self.labels = dict(labels)
        self.soft_pull_lambda = soft_pull_lambda
        self._global_diff = WeightedAverage()
        self._selector = make_selector_update(selector_training, current.selector, current.selector_moments,
                                              selector_lr)
        self._personalized: dict[str, Weights] = {}
        global_shapes = shapes_of(current.global_model)
        self._expected = {"global": global_shapes, "personalized": global_shapes, **self._selector.expected}

    @property
    def update_parts(self) -> tuple[str, ...]:
        """The named weight dicts every client update must hold."""
        return tuple(self._expected)

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
        missing = [part for part in self._expected if not isinstance(update.get(part), Mapping)]
        if missing:
            return f"update lacks {missing}"
        for part, shapes in self._expected.items():
            problem = update_problem(update[part], shapes)
            if problem:
                return f"{part}: {problem}"
        self._global_diff.add(update["global"], weight)
        self._selector.add(update, weight)
        self._personalized[client] = dict(update["personalized"])
        return None

    def result(self) -> ModelSet:
        """The models of the next round. Raises if no client contributed."""
        if not self._personalized:
            raise RuntimeError("no valid client update in this round")
        personalized = dict(self.current.personalized)
        personalized.update(soft_pull(self._personalized, self.soft_pull_lambda))
        global_model = self._global_diff.result()
        for name, diff in global_model.items():
            np.add(diff, self.current.global_model[name], out=diff)
        selector, moments = self._selector.result()
        return ModelSet(
            global_model=global_model,
            selector=selector,
            selector_moments=moments,
            personalized=personalized,
            next_round=self.current.next_round + 1,
            best_metrics=dict(self.current.best_metrics),
        )
