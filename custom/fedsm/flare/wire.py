"""What travels between the FedSM server and its clients: one DXO collection of named weight dicts.

Server to client (`TASK_PARTS`): the global model, that client's own personalized model, the
selector and the averaged selector Adam moments (only in train tasks from round 1 on, and only with
`client_adam`, where clients take the Adam step), plus meta (round, the client's selector label, the
number of clients). Client to server: the global weight difference, the personalized weights after
local training, the selector update (weight difference and Adam moments, or the full-batch gradient
with `client_adam_on_server` and `server_adam`), and meta (aggregation
weight, label, validation metrics of the received models, seconds spent).

Arrays travel as torch tensors (NVFlare's safetensors-based tensor transport is faster than its
NumPy one, and the server may keep received tensors on disk until it reads them: `tensor disk
offload`); `unpack` gives NumPy arrays back. Arrays larger than `PIECE_BYTES` travel as row pieces
(views, no copy on the sender) and are joined on arrival. NVFlare 2.9 serializes and downloads every array as one item whatever its size, so a
VGG11 selector's 392 MB fc6 weight would otherwise be held serialized whole, per receiving client,
on both sides; in pieces the transfer buffers stay small and the transfer is faster. Pieces are
larger than glibc's largest dynamic mmap threshold (32 MiB), so the memory of every piece and of its
transfer buffers goes back to the system when freed instead of staying in the allocator's heap.
"""

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from nvflare.apis.dxo import DXO, DataKind, from_shareable
from nvflare.apis.shareable import Shareable
from nvflare.app_opt.pt.decomposers import TensorDecomposer
from nvflare.fuel.utils import fobs

from ..models.weights import numpy_to_tensor

fobs.register(TensorDecomposer)  # both ends need it before the first message; registering twice is a no-op

TASK_PARTS = ("global", "personalized", "selector", "selector_moments")
PIECE_BYTES = 64 * 1024 * 1024
__all__ = ["PIECE_BYTES", "TASK_PARTS", "Meta", "join_pieces", "pack", "payload_bytes", "split_into_pieces", "unpack"]


class Meta:
    ROUND = "fedsm_round"
    NUM_ROUNDS = "fedsm_num_rounds"
    LABEL = "fedsm_selector_label"
    NUM_CLIENTS = "fedsm_num_clients"
    WEIGHT = "fedsm_aggregation_weight"
    METRICS = "fedsm_val_metrics"
    NUM_VAL = "fedsm_num_validation_images"
    SECONDS = "fedsm_seconds"  # {"validate": s, "train": s, "busy_from"/"busy_until": the client's clock}
    START_ERROR = "fedsm_start_error"  # reply header: why the client could not start (names the file)
    PIECES = "fedsm_pieces"  # {part: {array name: [number of row pieces, *shape]}} of the arrays sent in pieces


def _to_numpy(value: Any) -> Any:
    """A received array as NumPy: tensors share their memory, offloaded tensors are read from disk."""
    if hasattr(value, "materialize"):  # NVFlare's reference to a tensor offloaded to disk
        value = value.materialize()
    if isinstance(value, torch.Tensor):
        return value.numpy()
    return value


def _piece_key(name: str, index: int) -> str:
    return f"{name}#{index}"


def split_into_pieces(weights: Mapping[str, np.ndarray], piece_bytes: int = PIECE_BYTES
                      ) -> tuple[dict[str, np.ndarray], dict[str, list[int]]]:
    """`weights` with every array over `piece_bytes` replaced by row pieces `<name>#<i>` (views of
    it); returns the new dict and {name: [number of pieces, *shape]} of the arrays split."""
    out, pieces = {}, {}
    for name, array in weights.items():
        array = np.asarray(array)
        count = min(array.shape[0], -(-array.nbytes // piece_bytes)) if array.ndim else 1
        if count <= 1:
            out[name] = array if array.flags.c_contiguous else np.ascontiguousarray(array)  # for tensor transport
            continue
        for index, piece in enumerate(np.array_split(np.ascontiguousarray(array), count, axis=0)):
            out[_piece_key(name, index)] = piece
        pieces[name] = [count, *array.shape]
    return out, pieces


def join_pieces(weights: dict[str, Any], pieces: Mapping[str, list[int]]) -> None:
    """Undo `split_into_pieces` in place: each split array is rebuilt in one new buffer while its
    pieces (arrays, tensors or references to tensors on disk) are read and dropped one by one, so
    the peak is the array plus one piece. Joining twice is harmless."""
    for name, (count, *shape) in pieces.items():
        keys = [_piece_key(name, index) for index in range(int(count))]
        if name in weights and not any(key in weights for key in keys):
            continue
        missing = [key for key in keys if key not in weights]
        if missing:
            raise ValueError(f"'{name}' arrived without its pieces {missing[:3]}")
        joined, row = None, 0
        for key in keys:
            piece = _to_numpy(weights.pop(key))
            if not isinstance(piece, np.ndarray) or piece.ndim != len(shape) or piece.shape[1:] != tuple(shape[1:]) \
                    or row + len(piece) > shape[0] or (joined is not None and piece.dtype != joined.dtype):
                raise ValueError(f"piece '{key}' ({getattr(piece, 'shape', type(piece))}) does not fit "
                                 f"'{name}' of shape {tuple(shape)}")
            if joined is None:
                joined = np.empty(shape, dtype=piece.dtype)
            joined[row:row + len(piece)] = piece
            row += len(piece)
        if row != shape[0]:
            raise ValueError(f"the pieces of '{name}' hold {row} of its {shape[0]} rows")
        weights[name] = joined


def payload_bytes(parts: Mapping[str, Mapping[str, np.ndarray]]) -> int:
    """Bytes of all arrays in the weight dicts `parts` (what dominates a message's size)."""
    return sum(np.asarray(array).nbytes for weights in parts.values() for array in weights.values())


def pack(parts: Mapping[str, Mapping[str, np.ndarray]], meta: dict, piece_bytes: int = PIECE_BYTES) -> Shareable:
    """A Shareable holding the named weight dicts `parts` (large arrays in row pieces) and `meta`."""
    data, pieces = {}, {}
    for part, weights in parts.items():
        arrays, split = split_into_pieces(weights, piece_bytes)
        data[part] = {name: numpy_to_tensor(array) for name, array in arrays.items()}
        if split:
            pieces[part] = split
    return DXO(data_kind=DataKind.COLLECTION, data=data, meta={**meta, Meta.PIECES: pieces}).to_shareable()


def unpack(shareable: Shareable, expected_parts) -> tuple[dict[str, dict[str, np.ndarray]], dict]:
    """The weight dicts and meta of a Shareable made by `pack`; raises ValueError when parts are missing.

    The returned dict is the Shareable's own: popping a part from it releases that part's memory.
    """
    dxo = from_shareable(shareable)
    if dxo.data_kind != DataKind.COLLECTION:
        raise ValueError(f"expected a FedSM collection, got data kind {dxo.data_kind}")
    missing = [part for part in expected_parts if not isinstance(dxo.data.get(part), dict)]
    if missing:
        raise ValueError(f"FedSM message lacks {missing}")
    pieces = dxo.meta.get(Meta.PIECES) or {}
    if not isinstance(pieces, Mapping):
        raise ValueError(f"malformed {Meta.PIECES}: {pieces!r}")
    for part, weights in dxo.data.items():
        if not isinstance(weights, dict):
            continue
        split = pieces.get(part)
        if isinstance(split, Mapping):
            join_pieces(weights, split)
        for name, value in weights.items():
            weights[name] = _to_numpy(value)
    return dxo.data, dict(dxo.meta)
