"""The FedSM message contract: what a task and a client update hold, as NVFlare DXOs.

This module alone knows part names (a model's part is named by its kind, `core.model_kinds`), data
kinds and meta keys. A message is a `COLLECTION` DXO whose every part is a DXO of its own, so
NVFlare's stock DXO filters (quantization, `ExcludeVars`, `PercentilePrivacy`, `SVTPrivacy`) process
the parts they are made for:

| part | task (server to client) | update (client to server) |
|---|---|---|
| `global` | `WEIGHTS` | `WEIGHT_DIFF`, meta `NUM_STEPS_CURRENT_ROUND` |
| `personalized` | `WEIGHTS` (that client's own) | `WEIGHTS` after local training |
| `selector` | `WEIGHTS` | `WEIGHT_DIFF` (modes where the client steps Adam) |
| `selector_moments` | `APP_DEFINED` (averaged Adam moments) | `APP_DEFINED` (the client's moments) |
| `selector_gradient` | | `WEIGHT_DIFF` holding the full-batch gradient (meta `fedsm_content`) |
| `metrics` | | `METRICS`: validation of the received models |

Adam moments are `APP_DEFINED` on purpose: `exp_avg_sq` is a square of gradients that 16- or 8-bit
quantization flushes to zero, which turns the next Adam step into a division by `eps`; stock filters,
which act on `WEIGHTS` and `WEIGHT_DIFF` by default, leave them alone. Every part carries NVFlare's
`current_round`; the collection carries the round, the number of rounds, the client's selector label
and the number of clients (tasks) or the label, validation size and timings (updates).

How arrays travel (tensors, large arrays as row pieces) is `dxo_codec`'s; an `ExcludeVars` given a
list of names must therefore name a split array by a regular expression (see the README).
"""

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
from nvflare.apis.dxo import DXO, DataKind, MetaKey
from nvflare.apis.shareable import Shareable
from nvflare.app_common.app_constant import AppConstants
from nvflare.app_opt.pt.decomposers import TensorDecomposer
from nvflare.fuel.utils import fobs

from ..core.model_kinds import GLOBAL, PERSONALIZED, SELECTOR, SELECTOR_MOMENTS
from ..core.model_set import Weights
from ..core.selector_update import SelectorUpload
from ..tags import METRIC_TAGS
from .dxo_codec import (PIECE_BYTES, MessageError, decode_part, filter_history, int_meta, make_collection, number_in,
                        open_collection, weights_part)

fobs.register(TensorDecomposer)  # both ends need it before the first message; registering twice is a no-op

SELECTOR_GRADIENT, METRICS = "selector_gradient", "metrics"  # the other parts are named by their model kind

TASK_KINDS = {GLOBAL: DataKind.WEIGHTS, PERSONALIZED: DataKind.WEIGHTS, SELECTOR: DataKind.WEIGHTS,
              SELECTOR_MOMENTS: DataKind.APP_DEFINED}
UPDATE_KINDS = {GLOBAL: DataKind.WEIGHT_DIFF, PERSONALIZED: DataKind.WEIGHTS, SELECTOR: DataKind.WEIGHT_DIFF,
                SELECTOR_MOMENTS: DataKind.APP_DEFINED, SELECTOR_GRADIENT: DataKind.WEIGHT_DIFF}
CONTENT_KEY = "fedsm_content"  # part meta: what an APP_DEFINED or gradient part holds
CONTENTS = {SELECTOR_MOMENTS: "adam_moments", SELECTOR_GRADIENT: "full_batch_gradient"}

SELECTOR_PARTS = {"diff": SELECTOR, "moments": SELECTOR_MOMENTS, "gradient": SELECTOR_GRADIENT}  # SelectorUpload

LABEL_KEY = "fedsm_selector_label"
NUM_CLIENTS_KEY = "fedsm_num_clients"
NUM_VALIDATION_KEY = "fedsm_num_validation_images"
SECONDS_KEY = "fedsm_seconds"  # {"validate": s, "train": s, "busy_from"/"busy_until": the client's clock}
START_ERROR_HEADER = "fedsm_start_error"  # reply header: why the client could not start
# and "decode"/"encode": s the client took to decode the task and to build the reply; "received"/"replied":
# its clock when the task reached it and the reply was built
SECONDS_FIELDS = ("validate", "train", "busy_from", "busy_until", "decode", "encode", "received", "replied")
MEMORY_KEY = "fedsm_memory"  # byte counts for the round's cost line, some of MEMORY_FIELDS:
MEMORY_FIELDS = ("rss", "peak", "gpu_peak")  # RSS now, the process's peak RSS, on CUDA the round's GPU peak
MAX_BYTES = 2**50


MAX_STEPS = 10**6  # local steps per round a reply may claim (the weight cap keeps weighted sums finite)
MAX_SECONDS = 1e11  # durations and the client's clock (seconds since 1970)


@dataclasses.dataclass
class FedSMTask:
    """What the server sends one client: its models and the round's facts."""

    round: int
    num_rounds: int
    label: int
    num_clients: int
    global_model: Weights
    personalized: Weights
    selector: Weights
    selector_moments: Weights | None = None  # only where the client takes the selector's Adam step

    def to_shareable(self, piece_bytes: int = PIECE_BYTES) -> Shareable:
        parts = {GLOBAL: self.global_model, PERSONALIZED: self.personalized, SELECTOR: self.selector}
        if self.selector_moments is not None:
            parts[SELECTOR_MOMENTS] = self.selector_moments
        meta = {AppConstants.CURRENT_ROUND: self.round, AppConstants.NUM_ROUNDS: self.num_rounds,
                LABEL_KEY: self.label, NUM_CLIENTS_KEY: self.num_clients}
        return make_collection({name: _part(TASK_KINDS[name], name, weights, self.round, piece_bytes)
                            for name, weights in parts.items()}, meta).to_shareable()

    @classmethod
    def from_shareable(cls, shareable: Shareable, shapes: Mapping[str, Mapping[str, tuple]]) -> "FedSMTask":
        """Decode a task; `shapes` gives, per part, the shape of every array the receiver's models have.

        Every array must be there (a task is the whole model set of this client), except that the
        selector moments are empty before the selector's first step."""
        collection = open_collection(shareable)
        meta = collection.meta
        parts = {}
        for name, expected in shapes.items():
            if name == SELECTOR_MOMENTS and name not in collection.data:
                continue
            weights = decode_part(collection.data, name, TASK_KINDS[name], expected)
            missing = sorted(expected.keys() - weights.keys())
            if missing and not (name == SELECTOR_MOMENTS and not weights):
                raise MessageError(f"part '{name}' lacks {missing[:5]}")
            parts[name] = weights
        return cls(round=int_meta(meta, AppConstants.CURRENT_ROUND, 0), num_rounds=int_meta(meta, AppConstants.NUM_ROUNDS, 1),
                   label=int_meta(meta, LABEL_KEY, 0), num_clients=int_meta(meta, NUM_CLIENTS_KEY, 1),
                   global_model=parts[GLOBAL], personalized=parts[PERSONALIZED], selector=parts[SELECTOR],
                   selector_moments=parts.get(SELECTOR_MOMENTS))


@dataclasses.dataclass
class FedSMUpdate:
    """What a client returns: validation metrics of the received models and, after training, its update.

    Weight parts map names to arrays; a name a filter removed (`ExcludeVars`) is absent, and the server
    leaves that variable as it was. `steps` is the number of local optimizer steps of the UNets.
    """

    round: int
    label: int
    metrics: dict[str, float]
    num_validation: int
    seconds: dict[str, float]
    memory: dict[str, int] = dataclasses.field(default_factory=dict)
    steps: int = 0
    parts: dict[str, Weights] = dataclasses.field(default_factory=dict)
    filters: dict[str, list[str]] = dataclasses.field(default_factory=dict)  # part -> filters applied to it

    @property
    def global_diff(self) -> Weights:
        return self.parts[GLOBAL]

    @property
    def personalized(self) -> Weights:
        return self.parts[PERSONALIZED]

    @property
    def selector(self) -> SelectorUpload:
        return SelectorUpload(**{field: self.parts.get(part) for field, part in SELECTOR_PARTS.items()})

    def add_training(self, global_diff: Weights, personalized: Weights, selector: SelectorUpload, steps: int) -> None:
        """Attach the result of local training to this (validation) reply."""
        self.parts = {GLOBAL: global_diff, PERSONALIZED: personalized, **{
            part: getattr(selector, field) for field, part in SELECTOR_PARTS.items()
            if getattr(selector, field) is not None}}
        self.steps = steps

    def to_shareable(self, piece_bytes: int = PIECE_BYTES) -> Shareable:
        data = {METRICS: DXO(DataKind.METRICS, dict(self.metrics), {AppConstants.CURRENT_ROUND: self.round})}
        for name, weights in self.parts.items():
            data[name] = _part(UPDATE_KINDS[name], name, weights, self.round, piece_bytes)
            if name == GLOBAL:
                data[name].set_meta_prop(MetaKey.NUM_STEPS_CURRENT_ROUND, self.steps)
        meta = {AppConstants.CURRENT_ROUND: self.round, LABEL_KEY: self.label,
                NUM_VALIDATION_KEY: self.num_validation, SECONDS_KEY: dict(self.seconds),
                MEMORY_KEY: dict(self.memory)}
        return make_collection(data, meta).to_shareable()

    @classmethod
    def from_shareable(cls, shareable: Shareable, shapes: Mapping[str, Mapping[str, tuple]],
                       expected_round: int | None = None,
                       dtypes: Mapping[str, Mapping[str, np.dtype]] | None = None) -> "FedSMUpdate":
        """Decode and check a client's reply completely, before anything uses it.

        `shapes` names the weight parts the reply must hold and their arrays' shapes (none for a
        validation reply); `expected_round` the round of the task it answers; `dtypes` the dtype each
        array must arrive in (default: float32). Raises
        `MessageError` naming the part, the array and the filters applied to that part.
        """
        collection = open_collection(shareable)
        meta = collection.meta
        metrics_dxo = collection.data.get(METRICS)
        if not isinstance(metrics_dxo, DXO) or metrics_dxo.data_kind != DataKind.METRICS:
            raise MessageError("the reply has no METRICS part")
        update = cls(round=int_meta(meta, AppConstants.CURRENT_ROUND, 0), label=int_meta(meta, LABEL_KEY, 0),
                     metrics=_metrics(metrics_dxo.data), num_validation=int_meta(meta, NUM_VALIDATION_KEY, 0),
                     seconds=_seconds(meta.get(SECONDS_KEY)), memory=_memory(meta.get(MEMORY_KEY, {})))
        if expected_round is not None and update.round != expected_round:
            raise MessageError(f"the reply is for round {update.round}, the task was for round {expected_round}")
        extra = sorted(set(collection.data) - set(shapes) - {METRICS})
        if extra:
            raise MessageError(f"unexpected parts {extra[:5]}")
        for name, expected in shapes.items():
            dxo = collection.data.get(name)
            update.filters[name] = filter_history(dxo)
            try:
                update.parts[name] = decode_part(collection.data, name, UPDATE_KINDS[name], expected,
                                                  (dtypes or {}).get(name))
                if name == GLOBAL:
                    update.steps = int_meta(dxo.meta, MetaKey.NUM_STEPS_CURRENT_ROUND, 1, MAX_STEPS)
            except MessageError as error:
                applied = update.filters[name]
                raise MessageError(f"{error}{f' (filters applied to it: {applied})' if applied else ''}") from None
        return update


_LOCAL_PATH = re.compile(r"(?:~|\.{1,2})?(?:/[^/\s'\":,]+)+/(?=[^/\s'\":,]+)")


def public_reason(error: BaseException) -> str:
    """What a site tells the server about an error: its kind and message with every local folder cut
    to `.../` (file names and datalist keys stay; the full text stays in the site's own log)."""
    return f"{type(error).__name__}: {_LOCAL_PATH.sub('.../', str(error))}"


def reply_costs(shareable: Shareable) -> tuple[dict[str, float], dict[str, int]]:
    """The timings and memory a client reported with a reply (both empty for a reply that does not
    carry them well-formed): what `round_costs` records, read without decoding the arrays."""
    try:
        meta = open_collection(shareable).meta
        return _seconds(meta.get(SECONDS_KEY, {})), _memory(meta.get(MEMORY_KEY, {}))
    except MessageError:
        return {}, {}


def update_shapes(model: Mapping[str, tuple], selector_upload: Mapping[str, Mapping[str, tuple]]
                  ) -> dict[str, Mapping[str, tuple]]:
    """The parts of a training reply and their arrays' shapes: `model` (the UNet's) for the global
    difference and the personalized model, `selector_upload` by `SelectorUpload` field."""
    return {GLOBAL: model, PERSONALIZED: model,
            **{SELECTOR_PARTS[field]: shapes for field, shapes in selector_upload.items()}}


def _part(kind: str, name: str, weights: Mapping[str, np.ndarray], round_number: int, piece_bytes: int) -> DXO:
    meta = {AppConstants.CURRENT_ROUND: round_number}
    if name in CONTENTS:
        meta[CONTENT_KEY] = CONTENTS[name]
    return weights_part(kind, weights, meta, piece_bytes)


def _metrics(values: Any) -> dict[str, float]:
    if not isinstance(values, Mapping) or set(values) != set(METRIC_TAGS):
        raise MessageError(f"metrics must hold exactly {sorted(METRIC_TAGS)}, got "
                           f"{sorted(map(str, values)) if isinstance(values, Mapping) else type(values).__name__}")
    metrics = {}
    for key, value in values.items():
        metrics[key] = number_in(value, 0.0, 1.0, nan_ok=True)
        if metrics[key] is None:
            raise MessageError(f"metric '{key}' must be a number in [0, 1] (or NaN), got {str(value)[:50]}")
    return metrics


def _memory(values: Any) -> dict[str, int]:
    if not isinstance(values, Mapping) or not set(values) <= set(MEMORY_FIELDS) or not all(
            isinstance(v, int) and not isinstance(v, bool) and 0 <= v < MAX_BYTES for v in values.values()):
        raise MessageError(f"meta '{MEMORY_KEY}' must map some of {MEMORY_FIELDS} to byte counts below "
                           f"{MAX_BYTES}, got {str(values)[:100]}")
    return dict(values)


def _seconds(values: Any) -> dict[str, float]:
    if not isinstance(values, Mapping) or not set(values) <= set(SECONDS_FIELDS):
        raise MessageError(f"meta '{SECONDS_KEY}' must map some of {SECONDS_FIELDS} to seconds, got {values!r}")
    seconds = {}
    for key, value in values.items():
        seconds[key] = number_in(value, 0.0, MAX_SECONDS)
        if seconds[key] is None:
            raise MessageError(f"meta '{SECONDS_KEY}.{key}' must be a number in [0, {MAX_SECONDS:g}], "
                               f"got {str(value)[:50]}")
    return seconds
