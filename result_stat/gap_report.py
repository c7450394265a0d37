"""The generalization gap, measured: FedSM next to local, FedAvg and centralized training, on the test sets.

    python -m result_stat.gap_report --fedsm WS_FEDSM --fedavg WS_FEDAVG \
        --centralized OUT/centralized --local OUT/local --output OUT/report

Reads finished runs (nothing is trained here) and evaluates every model on the `testing` split of
every site of the FedSM run, plus any *unseen* site (a `client_<name>.json` datalist beside the
sites' that is neither a site of the run nor `client_All`; all its splits by default, since it took
no part in training):

- local: each site's own model (`result_stat.baselines local`) on that site;
- FedAvg: the FedAvg job's global model (`jobs/fedavg_prostate`): the final model or NVFlare's best
  one, whichever has the higher validation Dice in the job's GlobalModelEval results;
- centralized: the model trained on the pooled data (`result_stat.baselines centralized`);
- FedSM global only (selector threshold 1) and the FedSM super model (threshold `--select_threshold`,
  default 0.9), from the FedSM run's best checkpoints, with the routing of
  `result_stat.prostate_2d_test_only` (reused, not re-implemented);
- more FedSM runs (e.g. `selector_training: server_adam`) with `--fedsm-variant NAME=WS`.

Writes into `--output`, atomically: `report.md` (tables, gap verdict, configs and seeds),
`dice_table.csv`, `threshold_sweep.csv`, `confusion_matrix.csv`, `routing.csv`, `selector_rounds.csv`
(from the clients' TensorBoard events), `results.json` (everything, with each run's config and seed),
and the plots `dice_per_site.png`, `threshold_curve.png`, `confusion_matrix.png`,
`selector_accuracy.png`. Prints the Dice table.
"""

import argparse
import dataclasses
import datetime
import logging
import math
import sys
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from fedsm.config import resolve_path
from fedsm.data.datalist import SPLITS, DataError
from fedsm.io.checkpoint import CheckpointError
from fedsm.runtime import choose_device
from result_stat.gap_evaluation import (
    ROUTED_SUFFIX,
    FedSMRun,
    Inference,
    MethodResult,
    budget_differences,
    evaluate_centralized,
    evaluate_fedavg,
    evaluate_fedsm,
    evaluate_local,
    fedsm_methods,
    find_unseen,
    mean_over_seeds,
    seed_stds,
    selector_curves,
    site_items,
)
from result_stat.gap_format import none_if_nan
from result_stat.gap_report_files import StudyResults, study_record, write_report
from result_stat.gap_routing import Sites, confusion_counts, routing_rows, sweep_rows
from result_stat.gap_stats import Comparison, compare, pooled_mean
from result_stat.gap_verdict import evidence, gap_verdict, noise_note
from fedsm.evaluation import DEFAULT_THRESHOLD, TEST_SPLIT
from result_stat.prostate_2d_test_only import load_run_setup, trusted_sites
from result_stat.workspace import find_server_app

DEFAULT_THRESHOLDS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.99, 1.0)
MAIN_NAME = "FedSM"

logger = logging.getLogger("gap_report")


def evaluate_seed(args: argparse.Namespace, index: int, items: Mapping[str, list], sites: Sites,
                  inference: Inference) -> tuple[list[FedSMRun], list[MethodResult]]:
    """The runs of the `index`-th seed: every FedSM run, and each method's test Dice."""
    runs = [evaluate_fedsm(MAIN_NAME, Path(args.fedsm[index]), items, sites.unseen, inference)]
    for name, workspaces in variant_workspaces(args.fedsm_variant).items():
        runs.append(evaluate_fedsm(f"FedSM[{name}]", Path(workspaces[index]), items, sites.unseen, inference))
        if list(runs[-1].setup.labels) != sites.training:
            raise ValueError(f"FedSM run {workspaces[index]} has sites {list(runs[-1].setup.labels)}, "
                             f"not {sites.training}")
    methods: list[MethodResult] = []
    if args.local:
        methods.append(evaluate_local(Path(args.local[index]), items, sites.training, inference))
    if args.fedavg:
        methods.append(evaluate_fedavg(Path(args.fedavg[index]), items, inference))
    if args.centralized:
        methods.append(evaluate_centralized(Path(args.centralized[index]), items, inference))
    for run in runs:
        methods += fedsm_methods(run, args.select_threshold, args.route_by_validation)
    for method in methods:
        method.pooled = pooled_mean({site: method.per_site[site] for site in sites.training})[1]
    return runs, methods


def comparison_pairs(runs: Sequence[FedSMRun], names: Sequence[str]) -> list[tuple[str, str]]:
    """The paired comparisons of the report, among the methods present: each super model against FedAvg,
    centralized and its own global model; the validation-routed one against the super model and the
    global model; a variant's super model (e.g. float16 transport) against the first run's."""
    pairs = []
    for run in runs:
        super_model, global_only = f"{run.name} super model", f"{run.name} global only"
        routed = f"{run.name} {ROUTED_SUFFIX}"
        pairs += [(super_model, "FedAvg"), (super_model, "centralized"), (super_model, global_only),
                  (routed, super_model), (routed, global_only)]
        if run is not runs[0]:
            pairs.append((super_model, f"{runs[0].name} super model"))
    return [(a, b) for a, b in pairs if a in names and b in names]


def paired_comparisons(runs: Sequence[FedSMRun], per_seed: Mapping[str, Sequence[MethodResult]],
                       sites: Sites) -> list[Comparison]:
    """`comparison_pairs` on the pooled per-image test Dice, seed i against seed i."""
    pooled = {name: [method.pooled_dice(sites.training) for method in results] for name, results in per_seed.items()}
    return [compare(a, b, pooled[a], pooled[b]) for a, b in comparison_pairs(runs, list(per_seed))]


def run_label(run: FedSMRun) -> str:
    """The run's name with its selector-training mode, e.g. `FedSM (client_adam)`."""
    mode = run.config.get("selector_training", "")
    return run.name if not mode or mode in run.name else f"{run.name} ({mode})"


def study_results(runs: Sequence[FedSMRun], per_seed: dict[str, list[MethodResult]], sites: Sites,
                  args: argparse.Namespace) -> StudyResults:
    """Seed means and spreads of every method; the sweep, routing, confusion and selector curves of the
    first seed's FedSM runs."""
    thresholds = sorted(set(args.thresholds) | {args.select_threshold, 1.0})
    return StudyResults(
        sites=sites,
        methods=[mean_over_seeds(results, sites.training) for results in per_seed.values()],
        per_seed=per_seed,
        stds={name: seed_stds(results, sites.columns) for name, results in per_seed.items()},
        threshold=args.select_threshold,
        sweep=[row for run in runs for row in sweep_rows(run.name, run.per_site, thresholds, sites)],
        confusion={run.name: confusion_counts(run.per_site, len(sites.training)) for run in runs},
        routing={run.name: routing_rows(run.per_site, args.select_threshold, sites) for run in runs},
        curves={run.name: selector_curves(run) for run in runs},
    )


def findings(runs: Sequence[FedSMRun], study: StudyResults, comparisons: Sequence[Comparison]) -> dict[str, Any]:
    """The report's sentences: evidence per FedSM run, the gap verdict, the noise note and any budget
    differences between the runs."""
    by_pair = {(c.method, c.other): c for c in comparisons}
    pooled = {method.name: method.pooled for method in study.methods}
    verdict, closed = gap_verdict(pooled.get("local", math.nan), pooled.get("FedAvg", math.nan),
                                  pooled.get("centralized", math.nan), pooled[f"{MAIN_NAME} super model"],
                                  {run.name: pooled[f"{run.name} super model"] for run in runs[1:]})
    configs = {method.name.replace(" super model", ""): method.config for method in study.methods
               if "global only" not in method.name and ROUTED_SUFFIX not in method.name}
    return {
        "evidence": [evidence(run_label(run), by_pair.get((f"{run.name} super model", "FedAvg")),
                              by_pair.get((f"{run.name} super model", "centralized"))) for run in runs],
        "verdict": verdict,
        "noise_note": noise_note(pooled.get("FedAvg", math.nan), pooled[f"{MAIN_NAME} global only"]),
        "gap_closed_fraction": None if not math.isfinite(closed) else closed,
        "budget_differences": budget_differences(configs),
    }


def route_by_validation_record(runs: Sequence[FedSMRun], margin: float | None) -> dict[str, Any] | None:
    """Per FedSM run, the best checkpoints' validation Dice and the sites whose personalized models
    validation trusts at `margin`; None without `--route_by_validation`."""
    if margin is None:
        return None
    return {"margin": margin,
            "runs": {run.name: {"validation_dice": {k: none_if_nan(v) for k, v in run.validation.items()},
                                "personalized_sites": [client for client, label in run.setup.labels.items()
                                                       if label in trusted_sites(run.validation, run.setup.labels,
                                                                                 margin)]}
                     for run in runs}}


@dataclasses.dataclass(frozen=True)
class EvaluationData:
    """Where the test images come from: data folders, sites, the splits of the unseen sites."""

    base_dir: Path
    datalist_dir: Path
    sites: Sites
    unseen_splits: list[str]


def evaluation_data(args: argparse.Namespace) -> EvaluationData:
    """The test data of the FedSM run's first seed, or of the options that override its config."""
    setup = load_run_setup(find_server_app(args.fedsm[0]))
    config = setup.train_config
    base_dir = resolve_path(args.dataset_base_dir or config.dataset_base_dir, "dataset_base_dir")
    datalist_dir = resolve_path(args.datalist_json_path or config.datalist_json_path, "datalist_json_path")
    unseen = list(args.unseen) if args.unseen is not None else find_unseen(datalist_dir, list(setup.labels))
    return EvaluationData(base_dir, datalist_dir, Sites(dict(setup.labels), unseen), list(args.unseen_splits))


def run_facts(args: argparse.Namespace, data: EvaluationData, device: torch.device) -> dict[str, Any]:
    """When, how and on what the report was made."""
    return {
        "created": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
        "device": str(device),
        "select_threshold": args.select_threshold,
        "sites": data.sites.training,
        "unseen_sites": data.sites.unseen,
        "unseen_splits": data.unseen_splits,
        "test_split": TEST_SPLIT,
        "dataset_base_dir": str(data.base_dir),
        "datalist_json_path": str(data.datalist_dir),
        "seeds": len(args.fedsm),
    }


def build_report(args: argparse.Namespace) -> dict[str, Any]:
    device = choose_device()  # float32 whatever the runs' `amp`: one instrument for every method
    data = evaluation_data(args)
    sites = data.sites
    items = site_items(data.datalist_dir, data.base_dir, sites.training, sites.unseen, data.unseen_splits)
    logger.info("sites %s, unseen %s (%s), device %s, %d seed(s)", sites.training, sites.unseen,
                "+".join(data.unseen_splits), device, len(args.fedsm))
    inference = Inference(args.batch_size, args.cache_rate, device)
    evaluated = [evaluate_seed(args, index, items, sites, inference) for index in range(len(args.fedsm))]
    runs = evaluated[0][0]  # routing, confusion, sweep and selector curves: the first seed's runs
    per_seed = {seed_runs[0].name: list(seed_runs) for seed_runs in zip(*(methods for _, methods in evaluated))}
    study = study_results(runs, per_seed, sites, args)
    comparisons = paired_comparisons(runs, per_seed, sites)
    results = {**run_facts(args, data, device), **findings(runs, study, comparisons),
               **study_record(study, comparisons, route_by_validation_record(runs, args.route_by_validation))}
    write_report(Path(args.output).expanduser(), results, study)
    return results


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fedsm", required=True, nargs="+", metavar="WORKSPACE",
                        help="FedSM run: simulator workspace or server app folder; one per seed")
    parser.add_argument("--fedsm-variant", action="append", default=[], metavar="NAME=WORKSPACE",
                        help="another FedSM run to compare (e.g. server_adam=/tmp/ws_server_adam); repeatable, "
                             "once per seed for the same NAME (in --fedsm's seed order)")
    parser.add_argument("--fedavg", default=None, nargs="+", metavar="WORKSPACE",
                        help="FedAvg run (jobs/fedavg_prostate): simulator workspace; one per seed")
    parser.add_argument("--centralized", default=None, nargs="+", metavar="DIR",
                        help="output folder of `result_stat.baselines centralized`; one per seed")
    parser.add_argument("--local", default=None, nargs="+", metavar="DIR",
                        help="output folder of `result_stat.baselines local`; one per seed")
    parser.add_argument("--route_by_validation", type=float, default=None, metavar="MARGIN",
                        help="beyond the paper: add, per FedSM run, the super model that uses a site's personalized "
                             "model only where its validation Dice beats the global model's by more than MARGIN "
                             "(as `prostate_2d_test_only --route_by_validation`)")
    parser.add_argument("--output", required=True, help="report folder")
    parser.add_argument("--select_threshold", type=float, default=DEFAULT_THRESHOLD,
                        help=f"selector threshold of the super model (default {DEFAULT_THRESHOLD})")
    parser.add_argument("--thresholds", type=float, nargs="+", default=list(DEFAULT_THRESHOLDS),
                        help="thresholds of the sweep (the select threshold and 1 are always added)")
    parser.add_argument("--unseen", nargs="*", default=None, metavar="CLIENT",
                        help="unseen sites (datalist names, e.g. client_UNSEEN); default: every client_*.json "
                             "beside the sites' that is not a site of the FedSM run nor client_All; none: --unseen")
    parser.add_argument("--unseen_splits", nargs="+", default=list(SPLITS), choices=SPLITS,
                        help="splits of the unseen sites to test on (default: all; they took no part in training)")
    parser.add_argument("--dataset_base_dir", default=None, help="default: the FedSM run's config")
    parser.add_argument("--datalist_json_path", default=None, help="default: the FedSM run's config")
    parser.add_argument("--batch_size", type=int, default=None, help="inference batch size (default: each run's)")
    parser.add_argument("--cache_rate", type=float, default=0.0)
    args = parser.parse_args(argv)
    for value in [args.select_threshold, *args.thresholds]:
        if not 0.0 <= value <= 1.0:
            parser.error(f"thresholds must be in [0, 1], got {value}")
    for variant in args.fedsm_variant:
        if "=" not in variant:
            parser.error(f"--fedsm-variant takes NAME=WORKSPACE, got '{variant}'")
    seeds = len(args.fedsm)
    given = {"--fedavg": args.fedavg, "--centralized": args.centralized, "--local": args.local,
             **{f"--fedsm-variant {name}": runs for name, runs in variant_workspaces(args.fedsm_variant).items()}}
    for option, runs in given.items():
        if runs is not None and len(runs) != seeds:
            parser.error(f"{option} has {len(runs)} run(s), --fedsm {seeds}: give one per seed, in the same order")
    return args


def variant_workspaces(variants: Sequence[str]) -> dict[str, list[str]]:
    """`{NAME: [workspace per seed]}` from `--fedsm-variant NAME=WORKSPACE` options, in their order."""
    workspaces: dict[str, list[str]] = {}
    for variant in variants:
        name, _, workspace = variant.partition("=")
        workspaces.setdefault(name, []).append(workspace)
    return workspaces


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(logging.ERROR)
    logging.getLogger("tensorboard").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message="NvImgCodecPydicomReader")
    try:
        return build_report(args)
    except (FileNotFoundError, CheckpointError, DataError, ValueError, KeyError) as error:
        raise SystemExit(f"gap_report: error: {error}") from error


if __name__ == "__main__":
    main(sys.argv[1:])
