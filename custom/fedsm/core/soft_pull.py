"""SoftPull: the FedSM server update of the personalized models."""

from collections.abc import Mapping

import numpy as np


def soft_pull(
    personalized: Mapping[str, Mapping[str, np.ndarray]], lam: float
) -> dict[str, dict[str, np.ndarray]]:
    """New personalized model of every client: `lam * w_i + (1 - lam) / (K - 1) * sum_{j != i} w_j`.

    `personalized` maps client name to its named weights. `lam = 1` keeps the local models,
    `lam = 1 / K` gives every client the plain average. With a single client its model is returned
    unchanged. Arrays keep their dtype.
    """
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"soft_pull_lambda must be in [0, 1], got {lam}")
    clients = sorted(personalized)  # a fixed order of the float sums, whatever order updates arrived in
    if not clients:
        return {}
    if len(clients) == 1:
        return {clients[0]: dict(personalized[clients[0]])}
    names = personalized[clients[0]].keys()
    for client in clients[1:]:
        if personalized[client].keys() != names:
            raise KeyError(f"personalized model of '{client}' has different parameter names than '{clients[0]}'")
    lam = float(lam)
    others = (1.0 - lam) / (len(clients) - 1)
    pulled: dict[str, dict[str, np.ndarray]] = {client: {} for client in clients}
    for name in names:
        total = sum(np.asarray(personalized[c][name]) for c in clients)
        for client in clients:
            own = np.asarray(personalized[client][name])
            mixed = lam * own + others * (total - own)
            pulled[client][name] = mixed.astype(own.dtype, copy=False)
    return pulled
