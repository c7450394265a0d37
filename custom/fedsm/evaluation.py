"""Test evaluation of the FedSM super model: routing, Dice and the per-site and pooled table.

One definition for every place that scores a run: the central test-only script (`result_stat`), the
federated evaluation at the sites, and the gap study. A site's result is reduced to `SiteTotals`
(counts and sums), so the pooled row of sites scored apart equals the one of their images scored
together: image-weighted, with the images of empty masks left out of Dice.

For each test image the selector's softmax gives a top site and its probability p; if p > threshold
the image is segmented by that site's personalized model, else by the global model (threshold 1.0:
the global model only). Segmentation: sigmoid, threshold 0.5; metric: foreground Dice per image.
"""

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from .core.dice import binarize, dice_per_image
from .core.model_kinds import PERSONALIZED
from .core.super_model import GLOBAL_MODEL, route_by_confidence
from .io.progress import progress

DEFAULT_THRESHOLD = 0.9
TEST_SPLIT = "testing"
UNKNOWN_SITE = -1  # own label of images whose site carries no selector label (a pooled file, a new site)


@dataclasses.dataclass
class ImageResults:
    """Per-image results of one or more batches (all arrays of length N)."""

    own_label: np.ndarray  # the selector label of the site the image belongs to, or UNKNOWN_SITE
    top: np.ndarray  # the selector's top label
    confidence: np.ndarray  # its softmax probability
    route: np.ndarray  # the label whose personalized model segmented the image, or GLOBAL_MODEL
    super_dice: np.ndarray
    global_dice: np.ndarray

    @classmethod
    def empty(cls) -> "ImageResults":
        return cls(*(np.zeros(0, dtype=dtype) for dtype in (np.int64, np.int64, np.float64, np.int64, np.float64,
                                                               np.float64)))

    @classmethod
    def concat(cls, parts: Sequence["ImageResults"]) -> "ImageResults":
        if not parts:
            return cls.empty()
        return cls(**{field.name: np.concatenate([getattr(part, field.name) for part in parts])
                      for field in dataclasses.fields(cls)})

    def __len__(self) -> int:
        return len(self.super_dice)


@dataclasses.dataclass(frozen=True)
class Summary:
    """One row of the result table; metrics are NaN when there are no images."""

    site: str
    images: int
    super_dice: float
    global_dice: float
    selector_accuracy: float  # share of images of a known site whose top selector label is that site's
    personalized_share: float  # share of images segmented by a personalized model

    def as_json(self) -> dict[str, Any]:
        return {key: (None if isinstance(value, float) and math.isnan(value) else value)
                for key, value in dataclasses.asdict(self).items()}


@dataclasses.dataclass(frozen=True)
class SiteTotals:
    """Counts and sums a `Summary` is made of; what a site reports of its test images."""

    images: int = 0
    known: int = 0  # images of a site with a selector label
    correct: int = 0  # of those, the selector's top label is that site's
    routed: int = 0  # images segmented by a personalized model
    super_count: int = 0  # images with a Dice (non-empty mask)
    super_sum: float = 0.0
    global_count: int = 0
    global_sum: float = 0.0

    @classmethod
    def of(cls, results: ImageResults) -> "SiteTotals":
        known = results.own_label != UNKNOWN_SITE
        super_finite, global_finite = np.isfinite(results.super_dice), np.isfinite(results.global_dice)
        return cls(images=len(results), known=int(known.sum()),
                   correct=int((results.top == results.own_label)[known].sum()),
                   routed=int((results.route != GLOBAL_MODEL).sum()),
                   super_count=int(super_finite.sum()), super_sum=float(results.super_dice[super_finite].sum()),
                   global_count=int(global_finite.sum()),
                   global_sum=float(results.global_dice[global_finite].sum()))

    def __add__(self, other: "SiteTotals") -> "SiteTotals":
        return SiteTotals(**{field.name: getattr(self, field.name) + getattr(other, field.name)
                             for field in dataclasses.fields(self)})

    def summary(self, site: str) -> Summary:
        def share(part: float, whole: int) -> float:
            return part / whole if whole else math.nan

        if self.images == 0:
            return Summary(site, 0, math.nan, math.nan, math.nan, math.nan)
        return Summary(site=site, images=self.images, super_dice=share(self.super_sum, self.super_count),
                       global_dice=share(self.global_sum, self.global_count),
                       selector_accuracy=share(self.correct, self.known),
                       personalized_share=share(self.routed, self.images))

    def as_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)


def pooled_totals(totals: Iterable[SiteTotals]) -> SiteTotals:
    """The totals of every site together."""
    return sum(totals, SiteTotals())


def summarize(site: str, results: ImageResults) -> Summary:
    """Means over the images of `results`: Dice leaves out the NaN of empty masks; NaN metrics when
    there are no images, NaN selector accuracy when no image has a known site."""
    return SiteTotals.of(results).summary(site)


def choose_routes(probabilities: np.ndarray, threshold: float, available: Sequence[int]) -> np.ndarray:
    """`route_by_confidence`, except that a confident label without a personalized model (a selector
    class that no site of the run carries) falls back to the global model."""
    routes = route_by_confidence(probabilities, threshold)
    routes[(routes != GLOBAL_MODEL) & ~np.isin(routes, list(available))] = GLOBAL_MODEL
    return routes


@dataclasses.dataclass
class SuperModel:
    """The selector, the global model and each site's personalized model by selector label."""

    selector: nn.Module
    global_model: nn.Module
    personalized: dict[int, nn.Module]


@torch.no_grad()
def evaluate_batch(images: torch.Tensor, targets: torch.Tensor, own_label: int, model: SuperModel,
                   threshold: float) -> ImageResults:
    """Super-model and global-model Dice of one batch, with the selector's choices. Every image is
    segmented by the global model (for the global-only Dice); images routed to a site are segmented
    again by that site's personalized model."""
    probabilities = torch.softmax(model.selector(images).float(), dim=1).cpu().numpy()
    routes = choose_routes(probabilities, threshold, list(model.personalized))
    global_prediction = binarize(model.global_model(images))
    super_prediction = global_prediction.clone()
    for label in np.unique(routes[routes != GLOBAL_MODEL]):
        rows = torch.as_tensor(np.flatnonzero(routes == label), device=images.device)
        super_prediction[rows] = binarize(model.personalized[int(label)](images[rows]))
    return ImageResults(
        own_label=np.full(len(routes), own_label, dtype=np.int64),
        top=probabilities.argmax(axis=1).astype(np.int64),
        confidence=probabilities.max(axis=1).astype(np.float64),
        route=routes.astype(np.int64),
        super_dice=dice_per_image(super_prediction, targets).cpu().numpy().astype(np.float64),
        global_dice=dice_per_image(global_prediction, targets).cpu().numpy().astype(np.float64),
    )


def evaluate_loader(loader: Iterable[Mapping[str, torch.Tensor]], own_label: int, model: SuperModel,
                    threshold: float, device: torch.device, description: str) -> ImageResults:
    """`evaluate_batch` over every batch (`image`, `label`) of `loader`, with a progress bar."""
    parts = [evaluate_batch(batch["image"].to(device), batch["label"].to(device), own_label, model, threshold)
             for batch in progress(loader, desc=description, unit="batch", leave=False)]
    return ImageResults.concat(parts)


def format_table(rows: Sequence[Summary], pooled: Summary) -> str:
    """The result table: one row per site, then the pooled row."""
    width = max(len("site"), len(pooled.site), *(len(row.site) for row in rows))
    header = (f"{'site':<{width}}  {'images':>6}  {'super Dice':>10}  {'global Dice':>11}  "
              f"{'selector acc':>12}  {PERSONALIZED:>12}")

    def line(row: Summary) -> str:
        if row.images == 0:
            return f"{row.site:<{width}}  {0:>6}  {'-':>10}  {'-':>11}  {'-':>12}  {'-':>12}  (no test images)"
        accuracy = "-" if math.isnan(row.selector_accuracy) else f"{row.selector_accuracy:.1%}"
        return (f"{row.site:<{width}}  {row.images:>6}  {row.super_dice:>10.4f}  {row.global_dice:>11.4f}  "
                f"{accuracy:>12}  {row.personalized_share:>12.1%}")

    rule = "-" * len(header)
    return "\n".join([header, rule, *(line(row) for row in rows), rule, line(pooled)])


def routing_note(pooled: Summary, threshold: float) -> str:
    """One sentence on how much the selector routed (`routed_share_note` of the pooled row)."""
    return routed_share_note(pooled.personalized_share, pooled.images, threshold)


def routed_share_note(personalized_share: float, images: int, threshold: float) -> str:
    """One sentence on the share of `images` test images routed to personalized models; says so
    plainly when it is none, as the super model then equals the global model."""
    if images and personalized_share == 0.0 and threshold < 1.0:
        return (f"No test image was routed to a personalized model at threshold {threshold:g}: "
                "the super model equals the global model.")
    return f"{personalized_share:.1%} of the test images were routed to a personalized model (threshold {threshold:g})."
