"""What travels between the FedSM server and its clients: one DXO collection of named weight dicts.

Server to client (`TASK_PARTS`): the global model, that client's own personalized model, the
selector and the averaged selector Adam moments (empty in round 0, and always with `server_adam`),
plus meta (round, the client's selector label, the number of clients). Client to server: the global
weight difference, the personalized weights after local training, the selector update (weight
difference and Adam moments, or with `server_adam` the full-batch gradient), and meta (aggregation
weight, label, validation metrics of the received models, seconds spent).
"""

from collections.abc import Mapping

import numpy as np
from nvflare.apis.dxo import DXO, DataKind, from_shareable
from nvflare.apis.shareable import Shareable

TASK_PARTS = ("global", "personalized", "selector", "selector_moments")
__all__ = ["TASK_PARTS", "Meta", "pack", "payload_bytes", "unpack"]


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


def payload_bytes(parts: Mapping[str, Mapping[str, np.ndarray]]) -> int:
    """Bytes of all arrays in the weight dicts `parts` (what dominates a message's size)."""
    return sum(np.asarray(array).nbytes for weights in parts.values() for array in weights.values())


def pack(parts: Mapping[str, Mapping[str, np.ndarray]], meta: dict) -> Shareable:
    """A Shareable holding the named weight dicts `parts` and `meta`."""
    return DXO(data_kind=DataKind.COLLECTION, data={name: dict(w) for name, w in parts.items()}, meta=meta).to_shareable()


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
    return dxo.data, dict(dxo.meta)
