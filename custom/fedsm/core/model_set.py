"""The server's state between rounds: every FedSM model, the selector's Adam moments, round, best metrics."""

import dataclasses

import numpy as np

Weights = dict[str, np.ndarray]


@dataclasses.dataclass
class ModelSet:
    """Models to send in round `next_round`, the best validation metrics seen so far, and each update
    part's norm reference of every past round (the run's scale in the bounds, see `core.robust`).

    `personalized` maps client name to that client's model; it is a namespace of its own, so a
    client name can never collide with a model ID.
    """

    global_model: Weights
    selector: Weights
    selector_moments: Weights
    personalized: dict[str, Weights]
    next_round: int = 0
    best_metrics: dict[str, float] = dataclasses.field(default_factory=dict)
    norm_history: dict[str, list[float]] = dataclasses.field(default_factory=dict)  # part -> each past round's reference
