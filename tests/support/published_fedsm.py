"""Pieces of FedSM as published, written by hand for the faithfulness tests (plain torch and NumPy,
no `fedsm` import): the UNets' Dice loss, the selector's loss summed over its images, an Adam that
starts from the server's averaged moments with the site's own step count, and SoftPull."""

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn


def dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MONAI's `DiceLoss(sigmoid=True)`: per image and channel 1 - (2 |P T| + 1e-5) / (|P| + |T| + 1e-5),
    then the mean; with P the sigmoid of the logits.

    Written with MONAI 1.5's operations in MONAI 1.5's order (true positives, half the false positives,
    half the false negatives), so that it rounds as MONAI does: a UNet's conv biases in front of
    instance norm have a true gradient of zero, and Adam turns the rounding noise of their gradients
    into steps of up to lr, so another order of the same sums moves them differently."""
    prediction = torch.sigmoid(logits)
    true_positives = torch.sum(prediction * target, dim=(2, 3))
    false_positives = (torch.sum(prediction, dim=(2, 3)) - true_positives) * 0.5
    false_negatives = (torch.sum(target, dim=(2, 3)) - true_positives) * 0.5
    numerator = 2 * true_positives + 1e-5
    denominator = 2 * (true_positives + false_positives + false_negatives) + 1e-5
    return torch.mean(1 - numerator / denominator)


def selector_loss(logits: torch.Tensor, label: int) -> torch.Tensor:
    """Cross-entropy of every image against the site's label, summed over the images."""
    return -torch.log_softmax(logits, dim=1)[:, label].sum()


def adam_from_moments(model: nn.Module, lr: float, moments: Mapping[str, np.ndarray], own_step: int
                      ) -> torch.optim.Adam:
    """A `torch.optim.Adam` over `model` whose state, loaded through `load_state_dict`, holds the
    averaged `exp_avg/<name>` and `exp_avg_sq/<name>` of `moments` (copied: the optimizer steps them
    in place) and the site's own step count; empty `moments`: a fresh optimizer."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    if moments:
        state = {index: {"step": torch.tensor(float(own_step)),
                         "exp_avg": torch.tensor(moments[f"exp_avg/{name}"]),
                         "exp_avg_sq": torch.tensor(moments[f"exp_avg_sq/{name}"])}
                 for index, (name, _) in enumerate(model.named_parameters())}
        optimizer.load_state_dict({"state": state, "param_groups": optimizer.state_dict()["param_groups"]})
    return optimizer


def soft_pull(weights: Mapping[str, Mapping[str, np.ndarray]], lam: float) -> dict[str, dict[str, np.ndarray]]:
    """Each site's new personalized model: lam * its own + (1 - lam) / (K - 1) * the sum of the others'."""
    others = (1 - lam) / (len(weights) - 1)
    return {client: {name: lam * own[name] + others * sum(weights[j][name] for j in weights if j != client)
                     for name in own} for client, own in weights.items()}
