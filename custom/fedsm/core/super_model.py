"""The FedSM super model: a selector routes each image to a site's personalized model or the global model."""

from collections.abc import Sequence

import numpy as np
import torch

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


class SuperModel(torch.nn.Module):
    """Selector + global + one personalized model per site, combined by `route_by_confidence`."""

    def __init__(
        self,
        selector: torch.nn.Module,
        global_model: torch.nn.Module,
        personalized: Sequence[torch.nn.Module],
        threshold: float = 0.9,
    ) -> None:
        super().__init__()
        self.selector = selector
        self.global_model = global_model
        self.personalized = torch.nn.ModuleList(personalized)
        self.threshold = threshold

    @torch.no_grad()
    def route(self, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Selector probabilities (N, K) and the chosen model index per image."""
        probabilities = torch.softmax(self.selector(images), dim=1).cpu().numpy()
        return probabilities, route_by_confidence(probabilities, self.threshold)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Segmentation logits, each image segmented by the model it was routed to."""
        _, routes = self.route(images)
        outputs = torch.empty_like(images[:, :1])
        for index in np.unique(routes):
            model = self.global_model if index == GLOBAL_MODEL else self.personalized[int(index)]
            rows = torch.as_tensor(np.flatnonzero(routes == index), device=images.device)
            outputs[rows] = model(images[rows])
        return outputs
