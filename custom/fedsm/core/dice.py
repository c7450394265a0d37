"""Dice of binary foreground masks.

An image whose mask is empty has no Dice: `dice_per_image` gives it NaN and `mean_dice` leaves it
out of the mean. Scoring it 1.0 for an empty prediction (as before) made a site with many empty
masks look near perfect while saying nothing about segmentation; scoring it 0.0 would punish a
correct "nothing here". This is MONAI's `DiceMetric(ignore_empty=True)` convention. A set whose
masks are all empty has a NaN mean Dice; the start-up data check refuses such a datalist.
Validation, the test-only evaluation and the gap report all score with these two functions.
"""

import torch


def binarize(logits: torch.Tensor) -> torch.Tensor:
    """Segmentation post-processing: sigmoid, then threshold 0.5."""
    return (torch.sigmoid(logits) > 0.5).float()


def dice_per_image(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Foreground Dice of each image in a batch of binary masks (N, ...); NaN where the target is empty."""
    prediction = prediction.flatten(1).float()
    target = target.flatten(1).float()
    intersection = (prediction * target).sum(1)
    total = prediction.sum(1) + target.sum(1)
    dice = 2.0 * intersection / total.clamp(min=1e-8)
    return torch.where(target.sum(1) > 0, dice, torch.full_like(dice, float("nan")))


def mean_dice(scores: torch.Tensor) -> float:
    """Mean of per-image Dice scores, leaving out the NaN of empty masks; NaN when none is left."""
    scores = scores.flatten()
    return scores.nanmean().item() if scores.numel() else float("nan")
