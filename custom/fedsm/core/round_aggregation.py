"""One FedSM round on the server: stream in checked client updates, then build the next models."""

from collections.abc import Mapping

import numpy as np

from .adam_moments import STEP_KEY, moment_key
from .model_kinds import GLOBAL, PERSONALIZED
from .model_set import ModelSet, Weights
from .robust import incomplete_moments
from .selector_update import SelectorUpload
from .soft_pull import soft_pull
from .update_checks import MAX_ABS_VALUE, out_of_range_names
from .weighted_average import WeightedAverage


class RoundAggregator:
    """Aggregates one round: the step-weighted mean of the global weight differences, the selector
    update (`server_update`, a rule of `fedsm.selector_training`), both streamed (one accumulator
    each, no client's copy kept), and SoftPull of the personalized models of the clients that
    contributed. Clients that did not contribute keep their personalized model; a variable a client
    did not send (a filter excluded it) counts as unchanged from what the server holds."""

    def __init__(self, current: ModelSet, labels: Mapping[str, int], soft_pull_lambda: float,
                 server_update) -> None:
        self.current = current
        self.labels = dict(labels)
        self.soft_pull_lambda = soft_pull_lambda
        self._global_diff = WeightedAverage()
        self._selector = server_update
        self._personalized: dict[str, Weights] = {}
        self._personalized_sent: set[str] = set()  # names some contributor sent; the rest stay as held

    @property
    def contributors(self) -> list[str]:
        return list(self._personalized)

    def accept(self, client: str, label: int, global_diff: Weights, personalized: Weights,
               selector: SelectorUpload, weight: float) -> str | None:
        """Stream in one client's update (names and shapes already checked by the message decoder);
        returns None, or the reason it was rejected (then nothing is added)."""
        if client not in self.labels:
            return f"client '{client}' is not in client_id_label_mapping"
        if label != self.labels[client]:
            return f"selector label {label} is not the label of '{client}' ({self.labels[client]})"
        if client in self._personalized:
            return f"a second update from '{client}' in the same round"
        if not (np.isfinite(weight) and weight > 0):
            return f"invalid aggregation weight {weight}"
        arrays = {GLOBAL: global_diff, PERSONALIZED: personalized, **{
            field: value for field, value in vars(selector).items() if value is not None}}
        for part, values in arrays.items():
            bad = out_of_range_names(values)
            if bad:
                return f"{part}: NaN/Inf or |value| > {MAX_ABS_VALUE:g} in {bad[:5]}"
        if selector.moments is not None:
            step = selector.moments.get(STEP_KEY)
            if step is not None and not float(step) >= 1.0:
                return f"moments: Adam step {float(step)} is not >= 1"
            negative = [key for key, value in selector.moments.items()
                        if key.startswith(moment_key("exp_avg_sq", "")) and (np.asarray(value) < 0).any()]
            if negative:
                return f"moments: negative exp_avg_sq in {negative[:5]}"
            missing = incomplete_moments(selector.moments, selector.diff or {})
            if missing:
                return f"moments: incomplete, no {missing[:5]}"
        self._global_diff.add(global_diff, weight)
        self._selector.add(selector, weight)
        own = self.current.personalized[client] if client in self.current.personalized else self.current.global_model
        self._personalized[client] = {name: personalized.get(name, value) for name, value in own.items()}
        self._personalized_sent.update(personalized)
        return None

    def result(self) -> ModelSet:
        """The next model set: new global and selector, SoftPull'ed personalized models, the next
        round. Raises if no client contributed."""
        if not self._personalized:
            raise RuntimeError("no valid client update in this round")
        personalized = dict(self.current.personalized)
        for client, pulled in soft_pull(self._personalized, self.soft_pull_lambda).items():
            held = self._personalized[client]
            personalized[client] = {name: pulled[name] if name in self._personalized_sent else held[name]
                                    for name in pulled}
        mean_diff = self._global_diff.result()
        global_model = {name: np.add(mean_diff[name], value, out=mean_diff[name]) if name in mean_diff else value
                        for name, value in self.current.global_model.items()}
        selector, moments = self._selector.result()
        return ModelSet(
            global_model=global_model,
            selector=selector,
            selector_moments=moments,
            personalized=personalized,
            next_round=self.current.next_round + 1,
            best_metrics=dict(self.current.best_metrics),
            norm_history={part: list(values) for part, values in self.current.norm_history.items()},
        )
