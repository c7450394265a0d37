"""The FedSM message contract: what a task and a client update hold, as NVFlare DXOs.

This module alone knows part names, data kinds and meta keys. A message is a `COLLECTION` DXO
whose every part is a DXO of its own, so NVFlare's stock DXO filters (quantization, `ExcludeVars`,
`PercentilePrivacy`, `SVTPrivacy`) process the parts they are made for:

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

Arrays travel as torch tensors (NVFlare's safetensors transport, which the server can offload to
disk). Arrays over `PIECE_BYTES` travel as row pieces `<name>#<i>` (views, no copy on the sender):
NVFlare 2.9 serializes every array as one item, so a VGG11 selector's 392 MB fc6 weight would be held
serialized whole per receiving client. Pieces are joined by name against the shapes the receiver
expects, so they survive a filter that replaces a part's DXO; an `ExcludeVars` given a list of names
must therefore name a split array by a regular expression (see the README). Decoding takes each
piece out of the received message as it copies it into the joined array, so a receiver holds one
copy of a split array, not the message's pieces beside it for as long as NVFlare keeps the message.
"""

import dataclasses
import math
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from nvflare.apis.dxo import DXO, DataKind, MetaKey, from_shareable
from nvflare.apis.shareable import Shareable
from nvflare.app_common.app_constant import AppConstants
from nvflare.app_opt.pt.decomposers import TensorDecomposer
from nvflare.fuel.utils import fobs

from ..core.model_set import Weights
from ..core.selector_update import SelectorUpload
from ..tags import METRIC_TAGS
from ..models.weights import numpy_to_tensor

fobs.register(TensorDecomposer)  # both ends need it before the first message; registering twice is a no-op

PIECE_BYTES = 64 * 1024 * 1024

GLOBAL, PERSONALIZED, SELECTOR = "global", "personalized", "selector"
SELECTOR_MOMENTS, SELECTOR_GRADIENT, METRICS = "selector_moments", "selector_gradient", "metrics"

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
SECONDS_FIELDS = ("validate", "train", "busy_from", "busy_until")
MEMORY_KEY = "fedsm_memory"  # byte counts for the round's cost line, some of MEMORY_FIELDS:
MEMORY_FIELDS = ("rss", "peak", "gpu_peak")  # RSS now, the process's peak RSS, on CUDA the round's GPU peak
MAX_BYTES = 2**50
MAX_PARTS_NAMES = 100_000  # a part with more names than this is not a model of ours

_PIECE = re.compile(r"(?P<name>.+)#(?P<index>0|[1-9][0-9]{0,8})", re.ASCII)  # canonical indices only
MAX_INT = 2**31 - 1
MAX_STEPS = 10**6  # local steps per round a reply may claim (the weight cap keeps weighted sums finite)
MAX_SECONDS = 1e11  # durations and the client's clock (seconds since 1970)


class MessageError(ValueError):
    """A message that does not follow the contract; the text says which part and why."""


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
        return _collection({name: _part(TASK_KINDS[name], name, weights, self.round, piece_bytes)
                            for name, weights in parts.items()}, meta).to_shareable()

    @classmethod
    def from_shareable(cls, shareable: Shareable, shapes: Mapping[str, Mapping[str, tuple]]) -> "FedSMTask":
        """Decode a task; `shapes` gives, per part, the shape of every array the receiver's models have.

        Every array must be there (a task is the whole model set of this client), except that the
        selector moments are empty before the selector's first step."""
        collection = _open_collection(shareable)
        meta = collection.meta
        parts = {}
        for name, expected in shapes.items():
            if name == SELECTOR_MOMENTS and name not in collection.data:
                continue
            weights = _decode_part(collection.data, name, TASK_KINDS[name], expected)
            missing = sorted(expected.keys() - weights.keys())
            if missing and not (name == SELECTOR_MOMENTS and not weights):
                raise MessageError(f"part '{name}' lacks {missing[:5]}")
            parts[name] = weights
        return cls(round=_int(meta, AppConstants.CURRENT_ROUND, 0), num_rounds=_int(meta, AppConstants.NUM_ROUNDS, 1),
                   label=_int(meta, LABEL_KEY, 0), num_clients=_int(meta, NUM_CLIENTS_KEY, 1),
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
        return _collection(data, meta).to_shareable()

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
        collection = _open_collection(shareable)
        meta = collection.meta
        metrics_dxo = collection.data.get(METRICS)
        if not isinstance(metrics_dxo, DXO) or metrics_dxo.data_kind != DataKind.METRICS:
            raise MessageError("the reply has no METRICS part")
        update = cls(round=_int(meta, AppConstants.CURRENT_ROUND, 0), label=_int(meta, LABEL_KEY, 0),
                     metrics=_metrics(metrics_dxo.data), num_validation=_int(meta, NUM_VALIDATION_KEY, 0),
                     seconds=_seconds(meta.get(SECONDS_KEY)), memory=_memory(meta.get(MEMORY_KEY, {})))
        if expected_round is not None and update.round != expected_round:
            raise MessageError(f"the reply is for round {update.round}, the task was for round {expected_round}")
        extra = sorted(set(collection.data) - set(shapes) - {METRICS})
        if extra:
            raise MessageError(f"unexpected parts {extra[:5]}")
        for name, expected in shapes.items():
            dxo = collection.data.get(name)
            update.filters[name] = _filter_history(dxo)
            try:
                update.parts[name] = _decode_part(collection.data, name, UPDATE_KINDS[name], expected,
                                                  (dtypes or {}).get(name))
                if name == GLOBAL:
                    update.steps = _int(dxo.meta, MetaKey.NUM_STEPS_CURRENT_ROUND, 1, MAX_STEPS)
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
        meta = _open_collection(shareable).meta
        return _seconds(meta.get(SECONDS_KEY, {})), _memory(meta.get(MEMORY_KEY, {}))
    except MessageError:
        return {}, {}


def update_shapes(model: Mapping[str, tuple], selector_upload: Mapping[str, Mapping[str, tuple]]
                  ) -> dict[str, Mapping[str, tuple]]:
    """The parts of a training reply and their arrays' shapes: `model` (the UNet's) for the global
    difference and the personalized model, `selector_upload` by `SelectorUpload` field."""
    return {GLOBAL: model, PERSONALIZED: model,
            **{SELECTOR_PARTS[field]: shapes for field, shapes in selector_upload.items()}}


def wire_bytes(shareable: Shareable) -> int:
    """Bytes of all arrays of a FedSM message as it is (after any filter): what dominates its size on
    the wire. Arrays offloaded to disk are measured from their file's header, not read."""
    try:
        collection = from_shareable(shareable)
    except (ValueError, TypeError, KeyError):
        return 0
    parts = collection.data.values() if collection.data_kind == DataKind.COLLECTION else [collection]
    return sum(_nbytes(value) for part in parts if isinstance(part, DXO) and isinstance(part.data, Mapping)
               for value in part.data.values())


def _collection(parts: dict[str, DXO], meta: dict) -> DXO:
    return DXO(data_kind=DataKind.COLLECTION, data=parts, meta=meta)


def _part(kind: str, name: str, weights: Mapping[str, np.ndarray], round_number: int, piece_bytes: int) -> DXO:
    meta = {AppConstants.CURRENT_ROUND: round_number}
    if name in CONTENTS:
        meta[CONTENT_KEY] = CONTENTS[name]
    data = {key: numpy_to_tensor(array) for key, array in split_into_pieces(weights, piece_bytes).items()}
    return DXO(data_kind=kind, data=data, meta=meta)


def split_into_pieces(weights: Mapping[str, np.ndarray], piece_bytes: int = PIECE_BYTES) -> dict[str, np.ndarray]:
    """`weights` with every array over `piece_bytes` replaced by row pieces `<name>#<i>` (views)."""
    out = {}
    for name, array in weights.items():
        array = np.asarray(array)
        count = min(array.shape[0], -(-array.nbytes // piece_bytes)) if array.ndim else 1
        array = array if array.flags.c_contiguous else np.ascontiguousarray(array)  # for tensor transport
        if count <= 1:
            out[name] = array
            continue
        for index, piece in enumerate(np.array_split(array, count, axis=0)):
            out[f"{name}#{index}"] = piece
    return out


def _open_collection(shareable: Shareable) -> DXO:
    try:
        collection = from_shareable(shareable)
    except Exception as error:  # NVFlare raises assorted types for a Shareable without a DXO
        raise MessageError(f"not a DXO message: {error}") from None
    if collection.data_kind != DataKind.COLLECTION or not isinstance(collection.data, Mapping):
        raise MessageError(f"expected a FedSM COLLECTION DXO, got data kind {collection.data_kind}")
    if not isinstance(collection.meta, Mapping):
        raise MessageError("the message meta is not a dict")
    return collection


def _decode_part(data: Mapping[str, Any], name: str, kind: str, expected: Mapping[str, tuple],
                 dtypes: Mapping[str, np.dtype] | None = None) -> Weights:
    """One part's arrays, pieces joined, checked against `expected` shapes and the dtype (float32 unless
    `dtypes` says otherwise); names may be missing (a filter excluded them), never unknown."""
    dxo = data.get(name)
    if not isinstance(dxo, DXO):
        raise MessageError(f"part '{name}' is missing")
    if dxo.data_kind != kind:
        raise MessageError(f"part '{name}' has data kind {dxo.data_kind}, expected {kind}")
    if not isinstance(dxo.meta, Mapping):
        raise MessageError(f"part '{name}' has no meta dict")
    items = dxo.data
    if not isinstance(items, Mapping) or len(items) > MAX_PARTS_NAMES:
        raise MessageError(f"part '{name}' does not hold named arrays")
    whole, pieces = {}, {}
    for key in items:
        if not isinstance(key, str):
            raise MessageError(f"part '{name}' has a non-text name {key!r}")
        match = _PIECE.fullmatch(key)
        if key in expected:
            whole[key] = key
        elif match and match["name"] in expected:
            pieces.setdefault(match["name"], []).append(int(match["index"]))
        else:
            raise MessageError(f"part '{name}' holds an unexpected array '{key}'")
    weights = {}
    for key in whole:
        weights[key] = _checked(_to_numpy(items[key]), name, key, expected[key], dtypes)
    for key, indices in pieces.items():
        if key in whole:
            raise MessageError(f"part '{name}' holds '{key}' both whole and in pieces")
        weights[key] = _join(items, name, key, sorted(indices), tuple(expected[key]), dtypes)
    return weights


def _join(items: Mapping[str, Any], part: str, name: str, indices: list[int], shape: tuple,
          dtypes: Mapping[str, np.dtype] | None) -> np.ndarray:
    """Rebuild a split array in one buffer, taking its pieces out of a mutable message one by one (peak: the
    array plus a piece)."""
    if not shape or indices != list(range(len(indices))) or len(indices) > shape[0]:
        raise MessageError(f"part '{part}': the pieces of '{name}' are {indices[:5]}..., not 0..n-1 within "
                           f"its {shape[0] if shape else 0} rows")
    joined, row = None, 0
    for index in indices:
        key = f"{name}#{index}"
        # taken out of the message: NVFlare holds the message until the task or the result callback ends
        piece = _to_numpy(items.pop(key) if isinstance(items, dict) else items[key])
        if not isinstance(piece, np.ndarray) or piece.ndim != len(shape) or piece.shape[1:] != shape[1:] \
                or not 0 < len(piece) <= shape[0] - row:
            raise MessageError(f"part '{part}': piece {index} of '{name}' ({getattr(piece, 'shape', type(piece))}) "
                               f"does not fit its shape {shape}")
        _check_dtype(piece, part, name, dtypes)
        if joined is None:
            joined = np.empty(shape, dtype=piece.dtype)
        joined[row:row + len(piece)] = piece
        row += len(piece)
    if row != shape[0]:
        raise MessageError(f"part '{part}': the pieces of '{name}' hold {row} of its {shape[0]} rows")
    return _checked(joined, part, name, shape, dtypes)


def _checked(array: Any, part: str, name: str, shape: tuple, dtypes: Mapping[str, np.dtype] | None) -> np.ndarray:
    if not isinstance(array, np.ndarray):
        raise MessageError(f"part '{part}': '{name}' is a {type(array).__name__}, not an array")
    if array.shape != tuple(shape):
        raise MessageError(f"part '{part}': '{name}' has shape {array.shape}, expected {tuple(shape)}")
    _check_dtype(array, part, name, dtypes)
    return array


def _check_dtype(array: np.ndarray, part: str, name: str, dtypes: Mapping[str, np.dtype] | None) -> None:
    expected = np.dtype((dtypes or {}).get(name, np.float32))
    if array.dtype != expected:
        raise MessageError(f"part '{part}': '{name}' has dtype {array.dtype}, expected {expected}")


def _to_numpy(value: Any) -> Any:
    """A received array as NumPy: tensors share their memory, offloaded tensors are read from disk."""
    if hasattr(value, "materialize"):  # NVFlare's reference to a tensor offloaded to disk
        value = value.materialize()
    if isinstance(value, torch.Tensor) and value.dtype != torch.bfloat16:  # NumPy has no bfloat16
        return value.detach().cpu().numpy()
    return value


_SAFETENSORS_ITEM_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                           "BOOL": 1}


def _nbytes(value: Any) -> int:
    if hasattr(value, "materialize") and hasattr(value, "file_path"):
        from safetensors import safe_open

        with safe_open(value.file_path, framework="pt") as handle:
            piece = handle.get_slice(value.key)
            return _SAFETENSORS_ITEM_BYTES.get(piece.get_dtype(), 4) * math.prod(piece.get_shape())
    return int(getattr(value, "nbytes", 0))


def _int(meta: Mapping, key: str, minimum: int, maximum: int = MAX_INT) -> int:
    value = meta.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not minimum <= value <= maximum:
        raise MessageError(f"meta '{key}' must be an integer in [{minimum}, {maximum}], got {str(value)[:50]}")
    return int(value)


def _number(value: Any, low: float, high: float, nan_ok: bool = False) -> float | None:
    """`value` as a float when it is a real number in [low, high] (or NaN where allowed), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if low <= number <= high or (nan_ok and math.isnan(number)) else None


def _filter_history(dxo: Any) -> list[str]:
    history = dxo.get_filter_history() if isinstance(dxo, DXO) and isinstance(dxo.meta, Mapping) else None
    if history is None:
        return []
    if not isinstance(history, list) or not all(isinstance(name, str) for name in history):
        raise MessageError(f"malformed filter history {str(history)[:50]}")
    return list(history)


def _metrics(values: Any) -> dict[str, float]:
    if not isinstance(values, Mapping) or set(values) != set(METRIC_TAGS):
        raise MessageError(f"metrics must hold exactly {sorted(METRIC_TAGS)}, got "
                           f"{sorted(map(str, values)) if isinstance(values, Mapping) else type(values).__name__}")
    metrics = {}
    for key, value in values.items():
        metrics[key] = _number(value, 0.0, 1.0, nan_ok=True)
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
        seconds[key] = _number(value, 0.0, MAX_SECONDS)
        if seconds[key] is None:
            raise MessageError(f"meta '{SECONDS_KEY}.{key}' must be a number in [0, {MAX_SECONDS:g}], "
                               f"got {str(value)[:50]}")
    return seconds
