"""The gap report's files: `report.md`, the CSV tables, `results.json` and the plots, each written
atomically into the report folder, from a study's evaluated results."""

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fedsm.core.model_kinds import GLOBAL, PERSONALIZED
from fedsm.io.atomic import write_text_atomic
from result_stat.gap_evaluation import ROUTED_SUFFIX, MethodResult, method_value
from result_stat.gap_format import (
    csv_text,
    fmt,
    fmt_mean_std,
    fmt_signed,
    interval,
    markdown_table,
    none_if_nan,
    pct,
    short,
    site_label,
    text_table,
)
from result_stat.gap_plots import plot_confusion, plot_dice_bars, plot_selector_rounds, plot_threshold_curve
from result_stat.gap_routing import Sites
from result_stat.gap_stats import COMPARISON_KEYS, Comparison
from result_stat.plot_tensorboard_events import save_png
from fedsm.evaluation import TEST_SPLIT, routed_share_note

Table = tuple[list[str], list[list[Any]]]  # header, rows


@dataclasses.dataclass(frozen=True)
class StudyResults:
    """What the report shows besides `results.json`'s sentences: every method's test Dice (means over
    seeds, each seed, the spread) and the first seed's FedSM runs at the super model's `threshold`."""

    sites: Sites
    methods: list[MethodResult]  # means over seeds
    per_seed: dict[str, list[MethodResult]]
    stds: dict[str, dict[str, float]]  # {method: {column: standard deviation over seeds}}
    threshold: float
    sweep: list[dict[str, Any]]  # `gap_routing.sweep_rows` of every FedSM run
    confusion: dict[str, dict[str, list[int]]]  # {run: {site: counts per top site}}
    routing: dict[str, dict[str, dict[str, float]]]  # {run: `gap_routing.routing_rows`}
    curves: dict[str, dict[str, dict[int, float]]]  # {run: `gap_evaluation.selector_curves`}

    @property
    def main_run(self) -> str:
        return next(iter(self.confusion))

    @property
    def label_keys(self) -> list[str]:
        """The keys of the routing shares to each site's personalized model, in site order."""
        return [str(label) for label in self.sites.available]


def methods_record(study: StudyResults) -> list[dict[str, Any]]:
    """Each method in `results.json`: seed means, each seed's figures and the spread over seeds."""
    return [{"name": m.name, "source": m.source, "note": m.note, "seed": m.config.get("seed"), "config": m.config,
             "pooled_dice": none_if_nan(m.pooled),
             "sites": {site: {"images": n, "dice": none_if_nan(d)} for site, (n, d) in m.per_site.items()},
             "seed_runs": [{"seed": r.config.get("seed"), "source": r.source, "pooled_dice": none_if_nan(r.pooled),
                            "sites": {site: none_if_nan(d) for site, (_, d) in r.per_site.items()}}
                           for r in study.per_seed[m.name]],
             "std_over_seeds": {c: none_if_nan(v) for c, v in study.stds[m.name].items()}}
            for m in study.methods]


def study_record(study: StudyResults, comparisons: Sequence[Comparison],
                 route_by_validation: Mapping[str, Any] | None) -> dict[str, Any]:
    """The study's part of `results.json` (JSON null for NaN)."""
    return {
        "methods": methods_record(study),
        "paired_comparisons": [{k: none_if_nan(v) for k, v in dataclasses.asdict(c).items()} for c in comparisons],
        "route_by_validation": route_by_validation,
        "threshold_sweep": [{k: none_if_nan(v) for k, v in row.items()} for row in study.sweep],
        "confusion_matrix": {"classes": study.sites.training, "counts": study.confusion},
        "routing": {run: {site: {k: none_if_nan(v) for k, v in row.items()} for site, row in by_site.items()}
                    for run, by_site in study.routing.items()},
        "selector_rounds": {run: {tag: {str(k): v for k, v in by_round.items()} for tag, by_round in tags.items()}
                            for run, tags in study.curves.items()},
    }


def write_report(output: Path, results: Mapping[str, Any], study: StudyResults) -> None:
    """Every file of the report, then the Dice table and the verdict on standard output."""
    output.mkdir(parents=True, exist_ok=True)
    for name, (header, rows) in csv_tables(results, study).items():
        write_text_atomic(output / name, csv_text(header, rows))
    write_text_atomic(output / "results.json", json.dumps(results, indent=2) + "\n")
    write_plots(output, study)
    write_text_atomic(output / "report.md", "\n".join(markdown(results, study)))
    print(text_table(*dice_table(study)))
    print(results["verdict"])
    print(f"Report: {output / 'report.md'}")


def dice_table(study: StudyResults) -> Table:
    """The seed-mean test Dice (± standard deviation over seeds) of each method per column."""
    columns, unseen = study.sites.columns, study.sites.unseen
    header = ["method", *(site_label(c, unseen) for c in columns)]
    rows = [[m.name, *(fmt_mean_std(method_value(m, c), study.stds[m.name][c]) for c in columns)]
            for m in study.methods]
    return header, rows


def csv_tables(results: Mapping[str, Any], study: StudyResults) -> dict[str, Table]:
    """`{file name: table}` of every CSV file of the report."""
    columns, unseen = study.sites.columns, study.sites.unseen
    dice_rows = [[m.name, c, (m.per_site.get(c, (sum(m.per_site[s][0] for s in study.sites.training), 0))[0]),
                  fmt(method_value(m, c), 6), c in unseen, index, m.config.get("seed"), m.config.get("num_rounds"),
                  m.config.get("local_epochs"), m.config.get("image_size"), m.note]
                 for runs in study.per_seed.values() for index, m in enumerate(runs) for c in columns]
    summary_rows = [[m.name, c, results["seeds"], fmt(method_value(m, c), 6), fmt(study.stds[m.name][c], 6),
                     c in unseen] for m in study.methods for c in columns]
    comparison_rows = [[c["method"], c["other"], c["seeds"], *(fmt(c[key], 6) for key in COMPARISON_KEYS)]
                       for c in results["paired_comparisons"]]
    sweep_rows = [[row["run"], row["threshold"], row["site"], row["unseen"], row["images"],
                   fmt(row["super_dice"], 6), fmt(row["personalized_share"], 6)] for row in study.sweep]
    confusion_rows = [[run, site, site in unseen, *counts] for run, by_site in study.confusion.items()
                      for site, counts in by_site.items()]
    selector_rows = [[run, tag, step, f"{value:.6f}"] for run, tags in study.curves.items()
                     for tag, by_round in tags.items() for step, value in by_round.items()]
    class_names = study.sites.training
    return {
        "dice_table.csv": (["method", "site", "images", "test_dice", "unseen", "seed_run", "seed", "num_rounds",
                            "local_epochs", "image_size", "note"], dice_rows),
        "dice_summary.csv": (["method", "site", "seeds", "mean_test_dice", "std_over_seeds", "unseen"], summary_rows),
        "paired_comparisons.csv": (["method", "other", "seeds", "pooled_difference", "t95_low", "t95_high",
                                    "bootstrap95_low", "bootstrap95_high"], comparison_rows),
        "threshold_sweep.csv": (["run", "threshold", "site", "unseen", "images", "super_dice", "personalized_share"],
                                sweep_rows),
        "confusion_matrix.csv": (["run", "true_site", "unseen", *(f"predicted_{c}" for c in class_names)],
                                 confusion_rows),
        "routing.csv": routing_csv(study),
        "selector_rounds.csv": (["run", "tag", "round", "mean_over_clients"], selector_rows),
    }


def routing_csv(study: StudyResults) -> Table:
    header = ["run", "site", "unseen", "images", f"share_{GLOBAL}", *(f"share_{c}" for c in study.sites.training),
              "selector_accuracy", "mean_top_probability", "super_dice", "global_dice"]
    rows = [[run, site, site in study.sites.unseen, row["images"], fmt(row[GLOBAL], 6),
             *(fmt(row[label], 6) for label in study.label_keys), fmt(row["selector_accuracy"], 6),
             fmt(row["mean_top_probability"], 6), fmt(row["super_dice"], 6), fmt(row["global_dice"], 6)]
            for run, by_site in study.routing.items() for site, row in by_site.items()]
    return header, rows


def write_plots(output: Path, study: StudyResults) -> None:
    sites, main_run = study.sites, study.main_run
    seeds = len(next(iter(study.per_seed.values())))
    save_png(plot_dice_bars(study.methods, sites.columns, sites.unseen, study.stds, seeds),
             output / "dice_per_site.png")
    references = {m.name: m.pooled for m in study.methods if m.name in ("FedAvg", "centralized", "local")}
    save_png(plot_threshold_curve([row for row in study.sweep if row["run"] == main_run], references,
                                  study.threshold, main_run), output / "threshold_curve.png")
    save_png(plot_confusion(study.confusion[main_run], sites.training, sites.unseen), output / "confusion_matrix.png")
    if any(study.curves.values()):
        save_png(plot_selector_rounds(study.curves), output / "selector_accuracy.png")


def markdown(results: Mapping[str, Any], study: StudyResults) -> list[str]:
    """The lines of `report.md`."""
    return [*summary_section(results, study), *routed_by_validation_section(results),
            *comparisons_section(results["paired_comparisons"]),
            *(["The sections below show the first seed's runs.", ""] if results["seeds"] > 1 else []),
            *budget_section(results["budget_differences"]), *routing_section(study), *confusion_section(study),
            *sweep_section(study), *selector_section(study.curves), *runs_section(results, study)]


def summary_section(results: Mapping[str, Any], study: StudyResults) -> list[str]:
    """Title, test data, evidence, verdict, noise note and the Dice table."""
    sites, unseen, seeds = study.sites.training, study.sites.unseen, results["seeds"]
    test_data = (f"Created {results['created']} on {results['device']}. Test data: the `{TEST_SPLIT}` split of "
                 f"{', '.join(short(s) for s in sites)}"
                 + (f"; unseen site(s) {', '.join(short(u) for u in unseen)} (splits: "
                    f"{', '.join(results['unseen_splits'])}; no part in training)" if unseen else "")
                 + f", from `{results['datalist_json_path']}`.")
    dice_note = (f"Mean foreground Dice over test images; *pooled* = all test images of the training sites. "
                 f"Super model: selector threshold {study.threshold:g}."
                 + (f" Mean ± standard deviation over {seeds} seeds (`train.seed`: initialization and data order; "
                    f"same data split)." if seeds > 1 else " One seed."))
    return ["# Generalization gap report", "", test_data, "", *(f"**{line}**" for line in results["evidence"]), "",
            f"{results['verdict']}", "", *([results["noise_note"], ""] if results["noise_note"] else []),
            "## Test Dice per site", "", dice_note, "", markdown_table(*dice_table(study)), ""]


def routing_sentence(run: str, row: Mapping[str, Any]) -> str:
    """Which sites' personalized models validation trusts in `run`, with the validation Dice."""
    trusted = ", ".join(short(client) for client in row["personalized_sites"]) or "no site"
    dice = ", ".join(f"{short(key)} {fmt(value)}" for key, value in row["validation_dice"].items())
    return f"{run}: personalized models of {trusted} (validation Dice {dice})"


def routed_by_validation_section(results: Mapping[str, Any]) -> list[str]:
    routed = results["route_by_validation"]
    if not routed:
        return []
    return [f"*routed by validation* (beyond the paper): a site's personalized model is used only where its "
            f"best checkpoint's validation Dice beats the best global model's by more than "
            f"{routed['margin']:g}; images the selector sends elsewhere go to the global model. "
            + ("First seed: " if results["seeds"] > 1 else "")
            + "; ".join(routing_sentence(run, row) for run, row in routed["runs"].items()) + ".", ""]


def comparisons_section(comparisons: Sequence[Mapping[str, Any]]) -> list[str]:
    if not comparisons:
        return []
    rows = [[c["method"], c["other"], str(c["seeds"]), fmt_signed(c["difference"]), interval(c["t_low"], c["t_high"]),
             interval(c["bootstrap_low"], c["bootstrap_high"])] for c in comparisons]
    return ["## Paired comparisons (pooled test Dice)", "",
            "Difference of the pooled test Dice, same seed and same test images; 95% intervals: Student's t "
            "over the per-seed differences (needs two or more seeds), and a bootstrap over test images of the "
            "seed-mean per-image difference (image sampling noise only).", "",
            markdown_table(["method", "minus", "seeds", "difference", "95% t-interval (seeds)",
                            "95% bootstrap (images)"], rows), ""]


def budget_section(differences: Sequence[str]) -> list[str]:
    if not differences:
        return []
    return ["**Warning: the runs differ in budget or data settings:**", "", *(f"- {line}" for line in differences), ""]


def routing_section(study: StudyResults) -> list[str]:
    unseen, lines = study.sites.unseen, []
    header = ["site", "images", GLOBAL, *(f"→ {short(c)}" for c in study.sites.training), PERSONALIZED,
              "selector acc", "mean top p", "super Dice", "global Dice"]
    for run, by_site in study.routing.items():
        rows = [[site_label(site, unseen), str(row["images"]), pct(row[GLOBAL]),
                 *(pct(row[label]) for label in study.label_keys), pct(1 - row[GLOBAL]),
                 pct(row["selector_accuracy"]), fmt(row["mean_top_probability"], 3), fmt(row["super_dice"]),
                 fmt(row["global_dice"])] for site, row in by_site.items()]
        trained = [row for site, row in by_site.items() if site not in unseen]
        images = sum(row["images"] for row in trained)
        routed = sum(row["images"] * (1 - row[GLOBAL]) for row in trained) / images if images else 0.0
        lines += [f"## {run}: routing at threshold {study.threshold:g}", "",
                  "Share of each site's test images the super model sends to the global model or to a site's "
                  "personalized model; *selector acc* = top label is the image's own site.", "",
                  markdown_table(header, rows), "",
                  f"Training sites pooled: {routed_share_note(routed, images, study.threshold)}", ""]
    return lines


def confusion_section(study: StudyResults) -> list[str]:
    lines = ["## Selector confusion matrix (test images)", "",
             "Rows: true site; columns: the selector's top site (count, share of the row).", ""]
    for run, by_site in study.confusion.items():
        header = [f"{run}: true \\ top", *(short(c) for c in study.sites.training)]
        rows = [[site_label(site, study.sites.unseen), *(f"{n} ({n / max(sum(counts), 1):.0%})" for n in counts)]
                for site, counts in by_site.items()]
        lines += [markdown_table(header, rows), ""]
    return lines


def sweep_section(study: StudyResults) -> list[str]:
    lines = ["## Threshold sweep", "",
             "Super-model test Dice (share routed to personalized models) by selector threshold; "
             "threshold 1 = global model only.", ""]
    for run in study.confusion:
        run_rows = [row for row in study.sweep if row["run"] == run]
        sites = list(dict.fromkeys(row["site"] for row in run_rows))
        header = [f"{run}: threshold", *(site_label(s, study.sites.unseen) for s in sites)]
        rows = []
        for t in sorted({row["threshold"] for row in run_rows}):
            cells = {row["site"]: row for row in run_rows if row["threshold"] == t}
            rows.append([f"{t:g}", *(f"{fmt(cells[s]['super_dice'])} ({pct(cells[s]['personalized_share'])})"
                                     for s in sites)])
        lines += [markdown_table(header, rows), ""]
    return lines


def selector_section(curves: Mapping[str, Mapping[str, Mapping[int, float]]]) -> list[str]:
    if not any(curves.values()):
        return []
    rows = []
    for run, tags in curves.items():
        accuracy = tags.get("val_metric_select_model", {})
        confidence = tags.get("val_confidence_select_model", {})
        full = next((str(step) for step, value in accuracy.items() if value >= 1.0), "-")
        last = max(accuracy) if accuracy else None
        rows.append([run, str(len(accuracy)), pct(accuracy[last]) if last is not None else "-",
                     fmt(confidence.get(last, math.nan), 3) if last is not None else "-", full])
    return ["## Selector training per round", "",
            "Mean over clients of the selector's validation accuracy and its confidence in the own site "
            "(`selector_accuracy.png`, `selector_rounds.csv`).", "",
            markdown_table(["run", "rounds", "final accuracy", "final confidence", "first round with accuracy 100%"],
                           rows), ""]


def runs_section(results: Mapping[str, Any], study: StudyResults) -> list[str]:
    """Each run's sources, seeds and config, then the list of files."""
    lines = ["## Runs, configs and seeds", ""]
    for m in results["methods"]:
        if m["name"].endswith("global only") or ROUTED_SUFFIX in m["name"]:
            continue
        config = {k: v for k, v in m["config"].items() if k not in ("dataset_base_dir", "datalist_json_path")}
        seeds_of = ", ".join(str(r["seed"]) for r in m["seed_runs"])
        sources = "`, `".join(r["source"] for r in m["seed_runs"])
        lines += [f"- **{m['name'].replace(' super model', '')}** (seed {seeds_of}): `{sources}`"
                  + (f"; {m['note']}" if m["note"] else ""), f"  `{json.dumps(config, sort_keys=True)}`"]
    lines += ["", "Files: `dice_table.csv` (per seed), `dice_summary.csv`, `paired_comparisons.csv`, "
              "`threshold_sweep.csv`, `confusion_matrix.csv`, `routing.csv`, "
              "`selector_rounds.csv`, `results.json`; plots `dice_per_site.png`, `threshold_curve.png`, "
              "`confusion_matrix.png`" + (", `selector_accuracy.png`" if any(study.curves.values()) else "") + ".", ""]
    return lines
