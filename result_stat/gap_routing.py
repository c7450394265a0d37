"""The FedSM super model's routing at any selector threshold, from per-image results evaluated once at
threshold 0: the threshold sweep, the routing shares and the selector's confusion counts (no files,
no models)."""

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from fedsm.core.model_kinds import GLOBAL
from fedsm.core.super_model import GLOBAL_MODEL
from result_stat.gap_stats import POOLED
from fedsm.evaluation import ImageResults, choose_routes, summarize


@dataclasses.dataclass(frozen=True)
class Sites:
    """The test sites: the FedSM run's training sites with their selector labels (in label order), and
    the unseen sites, which took no part in training."""

    labels: dict[str, int]
    unseen: list[str]

    @property
    def training(self) -> list[str]:
        return list(self.labels)

    @property
    def available(self) -> list[int]:
        """The selector labels that have a personalized model."""
        return list(self.labels.values())

    @property
    def columns(self) -> list[str]:
        """The report's columns: each training site, pooled, each unseen site."""
        return [*self.labels, POOLED, *self.unseen]


def at_threshold(results: ImageResults, threshold: float, available: Sequence[int]) -> ImageResults:
    """The super model at `threshold`, from results evaluated at threshold 0.

    At threshold 0 every image is routed to its top site, so `results.super_dice` holds the Dice of
    the top site's personalized model; at any threshold the route is that model when the selector's
    top probability exceeds the threshold, else the global model. The routing is
    `fedsm.evaluation.choose_routes` itself, applied to the top probability.
    """
    if len(results) == 0:
        return results
    probabilities = np.zeros((len(results), max(int(results.top.max()) + 1, 1)), dtype=np.float32)
    probabilities[np.arange(len(results)), results.top] = results.confidence.astype(np.float32)
    routes = choose_routes(probabilities, threshold, available)
    personalized = routes != GLOBAL_MODEL
    return dataclasses.replace(
        results,
        route=routes.astype(np.int64),
        super_dice=np.where(personalized, results.super_dice, results.global_dice),
    )


def confusion_counts(per_site: Mapping[str, ImageResults], num_classes: int) -> dict[str, list[int]]:
    """`{site: counts}`: how many of the site's images the selector's top label assigns to each class."""
    return {site: np.bincount(results.top, minlength=num_classes)[:num_classes].astype(int).tolist()
            for site, results in per_site.items()}


def routing_shares(results: ImageResults, labels: Sequence[int]) -> dict[str, float]:
    """Share of images routed to the global model (`GLOBAL`) and to each label's personalized model."""
    count = len(results)
    shares = {GLOBAL: float(np.mean(results.route == GLOBAL_MODEL)) if count else math.nan}
    for label in labels:
        shares[str(label)] = float(np.mean(results.route == label)) if count else math.nan
    return shares


def sweep_rows(run: str, per_site: Mapping[str, ImageResults], thresholds: Sequence[float],
               sites: Sites) -> list[dict[str, Any]]:
    """The super model of `run` at each threshold: per site and pooled, its test Dice and the share of
    images routed to personalized models."""
    rows = []
    for threshold in thresholds:
        routed = {site: at_threshold(results, threshold, sites.available) for site, results in per_site.items()}
        summaries = {site: summarize(site, results) for site, results in routed.items()}
        summaries[POOLED] = summarize(POOLED, ImageResults.concat([routed[site] for site in sites.training]))
        for site in sites.columns:
            summary = summaries[site]
            rows.append({"run": run, "threshold": threshold, "site": site, "unseen": site in sites.unseen,
                         "images": summary.images, "super_dice": summary.super_dice,
                         "personalized_share": summary.personalized_share})
    return rows


def routing_rows(per_site: Mapping[str, ImageResults], threshold: float, sites: Sites) -> dict[str, dict[str, float]]:
    """Per site at `threshold`: the shares routed to the global and each personalized model, the
    selector's accuracy (NaN for an unseen site), its mean top probability, super and global Dice."""
    rows = {}
    for site, results in per_site.items():
        routed = at_threshold(results, threshold, sites.available)
        summary = summarize(site, routed)
        rows[site] = {"images": len(routed), **routing_shares(routed, sites.available),
                      "selector_accuracy": summary.selector_accuracy if site not in sites.unseen else math.nan,
                      "mean_top_probability": float(routed.confidence.mean()) if len(routed) else math.nan,
                      "super_dice": summary.super_dice, "global_dice": summary.global_dice}
    return rows
