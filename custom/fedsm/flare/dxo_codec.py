"""Named arrays in NVFlare DXOs: encoding (large arrays as row pieces), decoding with checks, sizes.

The building blocks of FedSM's message contracts (`messages` for training, `evaluation_messages` for
the test evaluation): those modules say which parts a message holds; this one how a part's arrays
travel. Arrays travel as torch tensors (NVFlare's safetensors transport, which the server can offload
to disk). Arrays over `PIECE_BYTES` travel as row pieces `<name>#<i>` (views, no copy on the sender):
NVFlare 2.9 serializes every array as one item, so a VGG11 selector's 392 MB fc6 weight would be held
serialized whole per receiving client. Pieces are joined by name against the shapes the receiver
expects, so they survive a filter that replaces a part's DXO. Decoding takes each piece out of the
received message as it copies it into the joined array, so a receiver holds one copy of a split
array, not the message's pieces beside it for as long as NVFlare keeps the message.
"""

import math
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from nvflare.apis.dxo import DXO, DataKind, from_shareable
from nvflare.apis.shareable import Shareable

from ..core.model_set import Weights
from ..models.weights import numpy_to_tensor

PIECE_BYTES = 64 * 1024 * 1024
MAX_PARTS_NAMES = 100_000  # a part with more names than this is not a model of ours
_PIECE = re.compile(r"(?P<name>.+)#(?P<index>0|[1-9][0-9]{0,8})", re.ASCII)  # canonical indices only
MAX_INT = 2**31 - 1


class MessageError(ValueError):
    """A message that does not follow the contract; the text says which part and why."""


def make_collection(parts: dict[str, DXO], meta: dict) -> DXO:
    return DXO(data_kind=DataKind.COLLECTION, data=parts, meta=meta)


def weights_part(kind: str, weights: Mapping[str, np.ndarray], meta: dict, piece_bytes: int = PIECE_BYTES) -> DXO:
    """A DXO of `kind` holding `weights` as tensors, arrays over `piece_bytes` in row pieces."""
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


def open_collection(shareable: Shareable) -> DXO:
    try:
        collection = from_shareable(shareable)
    except Exception as error:  # NVFlare raises assorted types for a Shareable without a DXO
        raise MessageError(f"not a DXO message: {error}") from None
    if collection.data_kind != DataKind.COLLECTION or not isinstance(collection.data, Mapping):
        raise MessageError(f"expected a FedSM COLLECTION DXO, got data kind {collection.data_kind}")
    if not isinstance(collection.meta, Mapping):
        raise MessageError("the message meta is not a dict")
    return collection


def decode_part(data: Mapping[str, Any], name: str, kind: str, expected: Mapping[str, tuple],
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


_SAFETENSORS_ITEM_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                           "BOOL": 1}


def _nbytes(value: Any) -> int:
    if hasattr(value, "materialize") and hasattr(value, "file_path"):
        from safetensors import safe_open

        with safe_open(value.file_path, framework="pt") as handle:
            piece = handle.get_slice(value.key)
            return _SAFETENSORS_ITEM_BYTES.get(piece.get_dtype(), 4) * math.prod(piece.get_shape())
    return int(getattr(value, "nbytes", 0))


def int_meta(meta: Mapping, key: str, minimum: int, maximum: int = MAX_INT) -> int:
    value = meta.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not minimum <= value <= maximum:
        raise MessageError(f"meta '{key}' must be an integer in [{minimum}, {maximum}], got {str(value)[:50]}")
    return int(value)


def number_in(value: Any, low: float, high: float, nan_ok: bool = False) -> float | None:
    """`value` as a float when it is a real number in [low, high] (or NaN where allowed), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if low <= number <= high or (nan_ok and math.isnan(number)) else None


def filter_history(dxo: Any) -> list[str]:
    history = dxo.get_filter_history() if isinstance(dxo, DXO) and isinstance(dxo.meta, Mapping) else None
    if history is None:
        return []
    if not isinstance(history, list) or not all(isinstance(name, str) for name in history):
        raise MessageError(f"malformed filter history {str(history)[:50]}")
    return list(history)


