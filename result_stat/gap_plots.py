"""The gap report's plots: Dice per site, the threshold curve, the selector's confusion matrix and its
training per round. Each function returns a matplotlib `Figure` (Agg canvas, no pyplot state)."""

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from result_stat.gap_evaluation import SELECTOR_TAGS, MethodResult, method_value
from result_stat.gap_format import short, site_label
from result_stat.gap_stats import POOLED


def plot_dice_bars(methods: Sequence[MethodResult], columns: Sequence[str], unseen: Sequence[str],
                   stds: Mapping[str, Mapping[str, float]] | None = None, seeds: int = 1) -> Figure:
    """Test Dice per site and pooled, one bar per method; with several seeds the mean, with the standard
    deviation over seeds as an error bar. The axis starts near the lowest bar, so that differences of a
    few hundredths stay visible."""
    figure = Figure(figsize=(max(7.0, 1.6 * len(columns) + 2), 4.6), layout="constrained")
    FigureCanvasAgg(figure)
    axis = figure.subplots()
    width = 0.8 / max(len(methods), 1)
    x = np.arange(len(columns))
    for index, method in enumerate(methods):
        values = [method_value(method, column) for column in columns]
        errors = [(stds or {}).get(method.name, {}).get(column, math.nan) for column in columns]
        axis.bar(x + (index - (len(methods) - 1) / 2) * width, np.nan_to_num(values, nan=0.0), width,
                 yerr=np.nan_to_num(errors, nan=0.0) if seeds > 1 else None, capsize=2,
                 label=method.name, color=f"C{index % 10}")
    axis.set_xticks(x, [site_label(c, unseen) for c in columns], fontsize=9)
    axis.set_ylabel("test Dice")
    shown = [value for value in (method_value(m, c) for m in methods for c in columns) if math.isfinite(value)] or [0.0]
    bottom = max(0.0, math.floor((min(shown) - 0.1) * 10) / 10)
    axis.set_ylim(bottom, min(1.0, max(shown) + 0.35 * (max(shown) - bottom) + 0.02))
    axis.grid(True, axis="y", alpha=0.3)
    axis.legend(fontsize=8, ncol=min(len(methods), 3), loc="upper left")
    axis.set_title("Test Dice per site" + (f" (mean ± std over {seeds} seeds)" if seeds > 1 else ""))
    return figure


def plot_threshold_curve(sweep: Sequence[dict[str, Any]], references: Mapping[str, float], threshold: float,
                         name: str) -> Figure:
    """Super-model Dice and the share routed to personalized models against the selector threshold,
    per site (unseen dashed) and pooled (bold), with the `references` (pooled Dice) as lines."""
    figure = Figure(figsize=(11, 5.0), layout="constrained")
    FigureCanvasAgg(figure)
    dice_axis, share_axis = figure.subplots(1, 2)
    sites = list(dict.fromkeys(row["site"] for row in sweep))
    for index, site in enumerate(sites):
        rows = [row for row in sweep if row["site"] == site]
        xs = [row["threshold"] for row in rows]
        style = dict(linewidth=2.4, color="k") if site == POOLED else dict(linewidth=1.2, color=f"C{index % 10}")
        if row_is_unseen(rows):
            style["linestyle"] = "--"
        dice_axis.plot(xs, [row["super_dice"] for row in rows], marker="o", markersize=3, label=short(site), **style)
        share_axis.plot(xs, [row["personalized_share"] for row in rows], marker="o", markersize=3,
                        label=short(site), **style)
    for index, (label, value) in enumerate(references.items()):
        if math.isfinite(value):
            dice_axis.axhline(value, color=f"C{(index + 5) % 10}", linestyle=":", linewidth=1.2,
                              label=f"{label} (pooled)")
    for axis in (dice_axis, share_axis):
        axis.axvline(threshold, color="grey", linewidth=0.8)
        axis.set_xlabel("selector threshold")
        axis.grid(True, alpha=0.3)
        axis.set_xlim(-0.02, 1.02)
    dice_axis.set_ylabel("super-model test Dice")
    dice_axis.set_title(f"{name}: Dice vs selector threshold (1 = global only)")
    share_axis.set_ylabel("share routed to a personalized model")
    share_axis.set_ylim(-0.02, 1.02)
    share_axis.set_title("Images routed to personalized models")
    handles, labels = dice_axis.get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 5), fontsize=8, frameon=False)
    return figure


def row_is_unseen(rows: Sequence[dict[str, Any]]) -> bool:
    return bool(rows) and rows[0].get("unseen", False)


def plot_confusion(counts: Mapping[str, list[int]], class_names: Sequence[str], unseen: Sequence[str]) -> Figure:
    """The selector's confusion matrix: true site by top site, count and share of the row."""
    rows = list(counts)
    matrix = np.array([counts[row] for row in rows], dtype=np.float64)
    shares = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    figure = Figure(figsize=(1.4 * len(class_names) + 3, 0.7 * len(rows) + 2), layout="constrained")
    FigureCanvasAgg(figure)
    axis = figure.subplots()
    image = axis.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(rows)):
        for j in range(len(class_names)):
            axis.text(j, i, f"{int(matrix[i, j])}\n{shares[i, j]:.0%}", ha="center", va="center", fontsize=8,
                      color="white" if shares[i, j] > 0.6 else "black")
    axis.set_xticks(range(len(class_names)), [short(c) for c in class_names], fontsize=9)
    axis.set_yticks(range(len(rows)), [site_label(r, unseen) for r in rows], fontsize=9)
    axis.set_xlabel("selector's top site")
    axis.set_ylabel("true site")
    axis.set_title("Selector confusion matrix (test images)")
    figure.colorbar(image, ax=axis, fraction=0.046, label="share of the row")
    return figure


def plot_selector_rounds(curves: Mapping[str, Mapping[str, Mapping[int, float]]]) -> Figure:
    """The selector's validation accuracy and confidence per round, mean over clients, one line per run."""
    figure = Figure(figsize=(10, 4.2), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, 2)
    titles = {"val_metric_select_model": "selector validation accuracy (mean over clients)",
              "val_confidence_select_model": "selector confidence in the own site (mean over clients)"}
    for axis, tag in zip(axes, SELECTOR_TAGS):
        for index, (name, by_tag) in enumerate(curves.items()):
            if tag in by_tag:
                axis.plot(list(by_tag[tag]), list(by_tag[tag].values()), marker="o", markersize=2.5,
                          color=f"C{index % 10}", label=name)
        axis.set_title(titles[tag], fontsize=10)
        axis.set_xlabel("round")
        axis.set_ylim(-0.02, 1.02)
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize=8)
    return figure
