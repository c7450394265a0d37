"""The gap report's statistics: pooled means, the spread over seeds and paired 95% intervals.

Numbers in, numbers out (numpy and `scipy.stats`; no files, no models). A paired comparison of two
methods gets two intervals of the mean difference of their pooled test Dice:

- Student's t over the per-seed differences (quantile `scipy.stats.t.ppf`): the seed noise, with two
  or more seeds;
- a percentile bootstrap over test images of the seed-mean per-image difference
  (`scipy.stats.bootstrap` with `method="percentile"`: the 2.5th and 97.5th percentiles of the
  resampled means, not the bias-corrected BCa interval that is scipy's default): the test-sampling
  noise only, also with one seed.
"""

import dataclasses
import math
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 2000
POOLED = "pooled"  # the column of the mean over the test images of every training site


def pooled_mean(parts: Mapping[str, tuple[int, float]]) -> tuple[int, float]:
    """(images, mean) over sites given `{site: (images, mean)}`; NaN mean when there are no images."""
    pairs = [(n, value) for n, value in parts.values() if n > 0 and math.isfinite(value)]
    total = sum(n for n, _ in pairs)
    return total, (sum(n * value for n, value in pairs) / total if total else math.nan)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation over seeds (std NaN for fewer than two)."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return math.nan, math.nan
    return float(values.mean()), float(values.std(ddof=1)) if values.size > 1 else math.nan


def t_interval(differences: Sequence[float]) -> tuple[float, float]:
    """95% t-interval of the mean of paired per-seed differences; NaN for fewer than two seeds."""
    mean, std = mean_std(differences)
    if not math.isfinite(std):
        return math.nan, math.nan
    quantile = float(stats.t.ppf((1 + CONFIDENCE) / 2, len(differences) - 1))
    half = quantile * std / math.sqrt(len(differences))
    return mean - half, mean + half


def bootstrap_interval(differences: np.ndarray, resamples: int = BOOTSTRAP_RESAMPLES,
                       seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of the mean paired difference when the test images are resampled.

    `differences` is (seeds, images): per-image Dice differences on the same test images in every seed;
    one resample draws images with replacement and averages their seed-mean differences."""
    per_image = np.asarray(differences, dtype=np.float64).mean(axis=0)
    if per_image.size == 0:
        return math.nan, math.nan
    if per_image.size == 1:  # every resample is that image (scipy asks for two or more)
        return float(per_image[0]), float(per_image[0])
    result = stats.bootstrap((per_image,), np.mean, n_resamples=resamples, vectorized=True,
                             confidence_level=CONFIDENCE, method="percentile", rng=seed)
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


@dataclasses.dataclass(frozen=True)
class Comparison:
    """A paired comparison of two methods' pooled test Dice: `method - other`."""

    method: str
    other: str
    seeds: int
    difference: float  # mean over seeds
    t_low: float
    t_high: float
    bootstrap_low: float
    bootstrap_high: float


COMPARISON_KEYS = ("difference", "t_low", "t_high", "bootstrap_low", "bootstrap_high")


def compare(method: str, other: str, dice: Sequence[np.ndarray], other_dice: Sequence[np.ndarray]) -> Comparison:
    """`method - other` from per-seed per-image Dice vectors on the same images (seed i with seed i),
    over the images that have a Dice in every vector (an empty mask has none)."""
    differences = np.stack([np.asarray(a, np.float64) - np.asarray(b, np.float64) for a, b in zip(dice, other_dice)])
    differences = differences[:, np.isfinite(differences).all(axis=0)]  # images without Dice (empty masks)
    per_seed = differences.mean(axis=1)
    return Comparison(method, other, len(per_seed), float(per_seed.mean()), *t_interval(per_seed),
                      *bootstrap_interval(differences))
