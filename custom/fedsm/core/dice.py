"""Dice of binary foreground masks."""

import torch


def binarize(logits: torch.Tensor) -> torch.Tensor:
    """Segmentation post-processing: sigmoid, then threshold 0.5."""
    return (torch.sigmoid(logits) > 0.5).float()


def dice_per_image(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Foreground Dice of each image in a batch of binary masks (N, ...); 1.0 when both are empty."""
    prediction = prediction.flatten(1).float()
    target = target.flatten(1).float()
    intersection = (prediction * target).sum(1)
    total = prediction.sum(1) + target.sum(1)
    return torch.where(total > 0, 2.0 * intersection / total.clamp(min=1e-8), torch.ones_like(total))
