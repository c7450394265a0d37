"""The FedSM super model's routing: the selector sends each image to a site's personalized model or the global model."""

import numpy as np

GLOBAL_MODEL = -1


def route_by_confidence(probabilities: np.ndarray, threshold: float) -> np.ndarray:
    """Model index per image: the top site when its probability exceeds `threshold`, else `GLOBAL_MODEL`.

    `probabilities` has shape (N, K) (softmax of the selector). A threshold of 1.0 always picks the
    global model.
    """
    probabilities = np.asarray(probabilities)
    if probabilities.ndim != 2:
        raise ValueError(f"probabilities must be (N, K), got shape {probabilities.shape}")
    top = probabilities.argmax(axis=1)
    confident = probabilities[np.arange(len(top)), top] > threshold
    return np.where(confident, top, GLOBAL_MODEL)
