"""Dice of binary masks, and how an empty mask is scored (left out, not counted as perfect)."""

import math

import torch

from fedsm.core.dice import dice_per_image, mean_dice


def _masks(*pixel_sets) -> torch.Tensor:
    """A batch of 1x4x4 masks, each with the listed flat pixels set to 1."""
    masks = torch.zeros(len(pixel_sets), 1, 4, 4)
    for index, pixels in enumerate(pixel_sets):
        masks[index].view(-1)[list(pixels)] = 1.0
    return masks


def test_dice_of_overlapping_disjoint_and_missed_foreground():
    prediction = _masks({0, 1}, {0}, set())
    target = _masks({1, 2}, {5}, {3})
    assert dice_per_image(prediction, target).tolist() == [0.5, 0.0, 0.0]


def test_an_empty_mask_has_no_dice_whatever_is_predicted():
    scores = dice_per_image(_masks(set(), {0, 1}, {0}), _masks(set(), set(), {0}))
    assert math.isnan(scores[0]) and math.isnan(scores[1]) and scores[2].item() == 1.0


def test_the_mean_leaves_empty_masks_out_and_is_nan_without_any_foreground():
    assert mean_dice(torch.tensor([0.5, float("nan"), 1.0])) == 0.75
    assert math.isnan(mean_dice(torch.tensor([float("nan"), float("nan")])))
    assert math.isnan(mean_dice(torch.tensor([])))
