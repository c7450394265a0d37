"""The FedSM test-evaluation contract: the best models a site scores its test split with, and what it
sends back (`fedsm.evaluation.SiteTotals`: counts and sums, no image and no per-image value).

| part | task (server to site) | result (site to server) |
|---|---|---|
| `global`, `selector` | `WEIGHTS` (best checkpoints) | |
| `personalized_<label>` | `WEIGHTS`: each site's best personalized model, by selector label | |
| `test_totals` | | `METRICS`: the site's `SiteTotals` |

The task's meta carries the receiving site's selector label (`UNKNOWN_SITE` for a site the selector
was not trained on) and the routing threshold.
"""

import dataclasses
import math
from collections.abc import Mapping

from nvflare.apis.dxo import DXO, DataKind
from nvflare.apis.shareable import Shareable

from ..core.model_kinds import GLOBAL, PERSONALIZED, SELECTOR
from ..core.model_set import Weights
from ..evaluation import UNKNOWN_SITE, SiteTotals
from .dxo_codec import (MAX_INT, PIECE_BYTES, MessageError, decode_part, int_meta, make_collection, number_in,
                        open_collection, weights_part)
from .messages import LABEL_KEY

PERSONALIZED_PREFIX, TOTALS = f"{PERSONALIZED}_", "test_totals"
THRESHOLD_KEY = "fedsm_select_threshold"


@dataclasses.dataclass
class EvaluationTask:
    label: int
    threshold: float
    global_model: Weights
    selector: Weights
    personalized: dict[int, Weights]  # selector label -> that site's best personalized model

    def to_shareable(self, piece_bytes: int = PIECE_BYTES) -> Shareable:
        parts = {GLOBAL: self.global_model, SELECTOR: self.selector,
                 **{f"{PERSONALIZED_PREFIX}{label}": weights for label, weights in self.personalized.items()}}
        return make_collection({name: weights_part(DataKind.WEIGHTS, weights, {}, piece_bytes)
                                for name, weights in parts.items()},
                               {LABEL_KEY: self.label, THRESHOLD_KEY: self.threshold}).to_shareable()

    @classmethod
    def from_shareable(cls, shareable: Shareable, unet: Mapping[str, tuple], selector: Mapping[str, tuple]
                       ) -> "EvaluationTask":
        """Decode a task against the shapes of the receiver's UNet and selector; every array must be there."""
        collection = open_collection(shareable)
        threshold = number_in(collection.meta.get(THRESHOLD_KEY), 0.0, 1.0)
        if threshold is None:
            raise MessageError(f"meta '{THRESHOLD_KEY}' must be a number in [0, 1]")
        personalized_labels = {}
        for name in collection.data:
            label = name[len(PERSONALIZED_PREFIX):]
            if name.startswith(PERSONALIZED_PREFIX) and label.isascii() and label.isdigit() and len(label) < 10:
                personalized_labels[int(label)] = name
            elif name not in (GLOBAL, SELECTOR):
                raise MessageError(f"unexpected part '{name[:50]}'")
        return cls(label=int_meta(collection.meta, LABEL_KEY, UNKNOWN_SITE, MAX_INT), threshold=threshold,
                   global_model=_complete(collection.data, GLOBAL, unet),
                   selector=_complete(collection.data, SELECTOR, selector),
                   personalized={label: _complete(collection.data, name, unet)
                                 for label, name in sorted(personalized_labels.items())})


def _complete(data, name: str, shapes: Mapping[str, tuple]) -> Weights:
    weights = decode_part(data, name, DataKind.WEIGHTS, shapes)
    missing = sorted(shapes.keys() - weights.keys())
    if missing:
        raise MessageError(f"part '{name}' lacks {missing[:5]}")
    return weights


def totals_to_shareable(totals: SiteTotals) -> Shareable:
    return make_collection({TOTALS: DXO(DataKind.METRICS, totals.as_dict())}, {}).to_shareable()


def totals_from_shareable(shareable: Shareable) -> SiteTotals:
    """A site's totals, checked: counts are integers that fit each other, sums lie in [0, count]."""
    part = open_collection(shareable).data.get(TOTALS)
    if not isinstance(part, DXO) or part.data_kind != DataKind.METRICS or not isinstance(part.data, Mapping):
        raise MessageError(f"the result has no METRICS part '{TOTALS}'")
    fields = {field.name: field.type for field in dataclasses.fields(SiteTotals)}
    if set(part.data) != set(fields):
        raise MessageError(f"part '{TOTALS}' must hold exactly {sorted(fields)}")
    values = {name: int_meta(part.data, name, 0) for name, kind in fields.items() if kind in (int, "int")}
    for name, count in (("super_sum", "super_count"), ("global_sum", "global_count")):
        value = number_in(part.data[name], 0.0, float(values[count]))
        if value is None or math.isnan(value):
            raise MessageError(f"'{name}' must be a number in [0, {count}]")
        values[name] = value
    totals = SiteTotals(**values)
    if not (totals.correct <= totals.known <= totals.images and totals.routed <= totals.images
            and totals.super_count <= totals.images and totals.global_count <= totals.images):
        raise MessageError(f"inconsistent counts {totals.as_dict()}")
    return totals
