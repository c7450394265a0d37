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
import csv
import dataclasses
import datetime
import io
import json
import logging
import math
import sys
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from fedsm.config import TrainConfig, resolve_path
from fedsm.core.super_model import GLOBAL_MODEL
from fedsm.data.datalist import SPLITS, DataError, check_images_readable, datalist_file, load_datalist
from fedsm.data.loading import make_loader
from fedsm.io.atomic import write_text_atomic
from fedsm.io.checkpoint import CheckpointError
from fedsm.models.networks import build_unet
from fedsm.core.dice import binarize, dice_per_image, mean_dice
from fedsm.runtime import choose_device
from result_stat.baselines import BEST_NAME, POOLED_DATALIST, RESULTS_NAME, num_rounds_of
from result_stat.plot_tensorboard_events import read_scalars, save_png
from result_stat.prostate_2d_test_only import (
    DEFAULT_THRESHOLD,
    TEST_SPLIT,
    ImageResults,
    RunSetup,
    choose_routes,
    evaluate_site,
    load_best_models,
    load_run_setup,
    load_weights_into,
    summarize,
    test_items,
    trusted_sites,
)
from result_stat.workspace import SERVER_CONFIG, find_event_dirs, find_server_app

DEFAULT_THRESHOLDS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.99, 1.0)
POOLED = "pooled"
MAIN_NAME = "FedSM"
UNSEEN_LABEL = -1  # own label of images of a site with no selector class
FEDAVG_FINAL, FEDAVG_BEST = "FL_global_model.pt", "best_FL_global_model.pt"
CROSS_VAL_RESULTS = Path("cross_site_val") / "cross_val_results.json"
SERVER_MODEL_PREFIX = "SRV_"
SELECTOR_TAGS = ("val_metric_select_model", "val_confidence_select_model")
# settings that must agree for a fair comparison (same data, preprocessing, budget, initialization)
BUDGET_KEYS = ("image_size", "local_epochs", "batch_size", "learning_rate", "seed", "dataset_base_dir",
               "datalist_json_path")

COMPARISON_KEYS = ("difference", "t_low", "t_high", "bootstrap_low", "bootstrap_high")

logger = logging.getLogger("gap_report")


# ---------------------------------------------------------------------------------------------
# The math on per-image results (no files, no models)
# ---------------------------------------------------------------------------------------------

def at_threshold(results: ImageResults, threshold: float, available: Sequence[int]) -> ImageResults:
    """The super model at `threshold`, from results evaluated at threshold 0.

    At threshold 0 every image is routed to its top site, so `results.super_dice` holds the Dice of
    the top site's personalized model; at any threshold the route is that model when the selector's
    top probability exceeds the threshold, else the global model. The routing is
    `prostate_2d_test_only.choose_routes` itself, applied to the top probability.
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


def pooled_mean(parts: Mapping[str, tuple[int, float]]) -> tuple[int, float]:
    """(images, mean) over sites given `{site: (images, mean)}`; NaN mean when there are no images."""
    pairs = [(n, value) for n, value in parts.values() if n > 0 and math.isfinite(value)]
    total = sum(n for n, _ in pairs)
    return total, (sum(n * value for n, value in pairs) / total if total else math.nan)


def confusion_counts(per_site: Mapping[str, ImageResults], num_classes: int) -> dict[str, list[int]]:
    """`{site: counts}`: how many of the site's images the selector's top label assigns to each class."""
    return {site: np.bincount(results.top, minlength=num_classes)[:num_classes].astype(int).tolist()
            for site, results in per_site.items()}


def routing_shares(results: ImageResults, labels: Sequence[int]) -> dict[str, float]:
    """Share of images routed to the global model (`"global"`) and to each label's personalized model."""
    count = len(results)
    shares = {"global": float(np.mean(results.route == GLOBAL_MODEL)) if count else math.nan}
    for label in labels:
        shares[str(label)] = float(np.mean(results.route == label)) if count else math.nan
    return shares


def choose_fedavg_checkpoint(cross_val: Mapping[str, Mapping[str, Mapping[str, float]]] | None,
                             available: Sequence[str]) -> tuple[str, dict[str, float]]:
    """Which FedAvg checkpoint to test: the one of `available` (file names) with the higher validation
    Dice, averaged over clients weighted by their validation sizes, in the GlobalModelEval results
    `cross_val` (`{client: {"SRV_<file>": {"val_dice", "num_val"}}}`). Ties go to NVFlare's best
    model (the earlier one). Without results: the best model if it exists, else the final one.
    Returns the file name and `{file: mean validation Dice}`."""
    scores: dict[str, float] = {}
    for name in available:
        pairs = []
        for metrics in (cross_val or {}).values():
            entry = metrics.get(SERVER_MODEL_PREFIX + name) or {}
            if isinstance(entry.get("val_dice"), (int, float)) and math.isfinite(entry["val_dice"]):
                pairs.append((int(entry.get("num_val", 1)), float(entry["val_dice"])))
        if pairs:
            scores[name] = pooled_mean(dict(enumerate(pairs)))[1]
    order = [name for name in (FEDAVG_BEST, FEDAVG_FINAL) if name in available]
    if not order:
        raise FileNotFoundError(f"no FedAvg checkpoint ({FEDAVG_BEST} or {FEDAVG_FINAL})")
    if not scores:
        return order[0], scores
    return max((name for name in order if name in scores), key=lambda name: scores[name]), scores


def closing(fedavg: float, centralized: float, super_dice: float) -> tuple[str, float]:
    """How much of the gap centralized - FedAvg (> 0) the super model closed: ("closed" / "partly closed
    (x% of it)" / "not closed", the share)."""
    closed = (super_dice - fedavg) / (centralized - fedavg)
    if super_dice >= centralized:
        return "closed", closed
    if closed >= 0.005:  # at least 0.5% of the gap, so that the share printed is not 0%
        return f"partly closed ({closed:.0%} of it)", closed
    return "not closed", closed


def gap_verdict(local: float, fedavg: float, centralized: float, super_dice: float,
                variants: Mapping[str, float] | None = None) -> tuple[str, float]:
    """A sentence on the gap between FedAvg and centralized training, and the share of it that the
    FedSM super model closed (NaN when there is no gap); `variants` adds other FedSM runs' super models."""
    if not all(math.isfinite(value) for value in (fedavg, centralized, super_dice)):
        return "The gap cannot be assessed: FedAvg, centralized or FedSM results are missing.", math.nan
    gap = centralized - fedavg
    if gap <= 0:
        verdict = (f"No generalization gap on this data: FedAvg ({fedavg:.4f}) already matches or beats centralized "
                   f"training ({centralized:.4f}); the FedSM super model scores {super_dice:.4f}.")
        return verdict, math.nan
    how, closed = closing(fedavg, centralized, super_dice)
    verdict = (f"Gap centralized - FedAvg = {gap:+.4f} pooled Dice ({centralized:.4f} vs {fedavg:.4f}); "
               f"FedSM super model {super_dice:.4f}: the gap is {how}.")
    for name, value in (variants or {}).items():
        if math.isfinite(value):
            verdict += f" {name} super model {value:.4f}: {closing(fedavg, centralized, value)[0]}."
    if math.isfinite(local):
        verdict += f" Local-only training: {local:.4f}."
    return verdict, closed


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation over seeds (std NaN for fewer than two)."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return math.nan, math.nan
    return float(values.mean()), float(values.std(ddof=1)) if values.size > 1 else math.nan


T_975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t_quantile_975(df: int) -> float:
    """Student's t 97.5% quantile (two-sided 95%); beyond 30 degrees of freedom 1.96 + 2.4 / df (within 0.003)."""
    return T_975[df - 1] if df <= len(T_975) else 1.96 + 2.4 / df


def t_interval(differences: Sequence[float]) -> tuple[float, float]:
    """95% t-interval of the mean of paired per-seed differences; NaN for fewer than two seeds."""
    mean, std = mean_std(differences)
    if not math.isfinite(std):
        return math.nan, math.nan
    half = t_quantile_975(len(differences) - 1) * std / math.sqrt(len(differences))
    return mean - half, mean + half


def bootstrap_interval(differences: np.ndarray, resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of the mean paired difference when the test images are resampled.

    `differences` is (seeds, images): per-image Dice differences on the same test images in every seed;
    one resample draws images with replacement and averages their seed-mean differences."""
    per_image = np.asarray(differences, dtype=np.float64).mean(axis=0)
    if per_image.size == 0:
        return math.nan, math.nan
    draws = np.random.default_rng(seed).integers(0, per_image.size, (resamples, per_image.size))
    low, high = np.percentile(per_image[draws].mean(axis=1), [2.5, 97.5])
    return float(low), float(high)


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


def compare(method: str, other: str, dice: Sequence[np.ndarray], other_dice: Sequence[np.ndarray]) -> Comparison:
    """`method - other` from per-seed per-image Dice vectors on the same images (seed i with seed i),
    over the images that have a Dice in every vector (an empty mask has none)."""
    differences = np.stack([np.asarray(a, np.float64) - np.asarray(b, np.float64) for a, b in zip(dice, other_dice)])
    differences = differences[:, np.isfinite(differences).all(axis=0)]  # images without Dice (empty masks)
    per_seed = differences.mean(axis=1)
    return Comparison(method, other, len(per_seed), float(per_seed.mean()), *t_interval(per_seed),
                      *bootstrap_interval(differences))


def seed_noise(comparison: Comparison) -> str:
    """Whether `comparison`'s difference is beyond seed noise (its t-interval excludes 0)."""
    if comparison.seeds < 2:
        return "seed noise not measured (one seed)"
    if comparison.t_low > 0 or comparison.t_high < 0:
        return f"beyond seed noise over {comparison.seeds} seeds"
    return f"within seed noise over {comparison.seeds} seeds"


def evidence(run: str, vs_fedavg: Comparison | None, vs_centralized: Comparison | None) -> str:
    """One sentence: does the super model of `run` close the gap on these data, beyond seed noise?"""
    if vs_fedavg is None or vs_centralized is None:
        return f"{run}: FedAvg or centralized results are missing; the gap cannot be assessed."
    gain, shortfall = vs_fedavg.difference, vs_centralized.difference
    numbers = (f"super model - FedAvg {gain:+.4f} ({seed_noise(vs_fedavg)}), "
               f"super model - centralized {shortfall:+.4f} ({seed_noise(vs_centralized)})")
    if gain - shortfall <= 0:
        return f"{run}: no gap to close on these data (FedAvg matches centralized); {numbers}."
    if vs_fedavg.seeds < 2:
        how = closing(0.0, gain - shortfall, gain)[0]
        return f"{run}: the gap is {how} with one seed, so whether that is beyond seed noise is unknown; {numbers}."
    better = vs_fedavg.t_low > 0
    reaches = vs_centralized.t_high >= 0
    if better and reaches:
        how = "closes the gap: better than FedAvg and not below centralized, beyond seed noise"
    elif better:
        how = f"narrows the gap ({gain / (gain - shortfall):.0%} of it) beyond seed noise but stays below centralized"
    elif vs_fedavg.t_high < 0:
        how = "is worse than FedAvg beyond seed noise"
    else:
        how = "does not close the gap beyond seed noise"
    return f"{run}: FedSM {how}; {numbers}."


def noise_note(fedavg: float, fedsm_global: float) -> str:
    """FedAvg and FedSM's global model are trained alike: their difference measures run-to-run noise."""
    if not (math.isfinite(fedavg) and math.isfinite(fedsm_global)):
        return ""
    return (f"FedAvg and FedSM's global model are trained alike (same initial model, data order, local training "
            f"and step-weighted averaging); they differ by floating-point summation order, which grows over "
            f"rounds, and by the round picked as best. Their pooled difference, {fedsm_global - fedavg:+.4f}, "
            f"indicates how large run-to-run noise is here.")


# ---------------------------------------------------------------------------------------------
# Runs: configs, checkpoints, evaluation
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass
class MethodResult:
    """Test Dice of one method in one seed: per image (`dice`, NaN for an empty mask) and `{site:
    (images scored, mean Dice)}`; the pooled mean is over training sites."""

    name: str
    dice: dict[str, np.ndarray]
    config: dict[str, Any]
    source: str
    note: str = ""
    pooled: float = math.nan

    @property
    def per_site(self) -> dict[str, tuple[int, float]]:
        return {site: (int(np.isfinite(values).sum()), mean_dice(torch.as_tensor(values, dtype=torch.float64)))
                for site, values in self.dice.items()}

    def pooled_dice(self, sites: Sequence[str]) -> np.ndarray:
        """Per-image Dice over the test images of `sites`, in site order."""
        return np.concatenate([np.asarray(self.dice[site], np.float64) for site in sites])


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"cannot read {path}: {error}") from error


SELECTOR_KEYS = ("learning_rate_select", "selector_local_epochs", "selector", "select_num_classes",
                 "selector_training")


def unet_only(config: Mapping[str, Any]) -> dict[str, Any]:
    """A training config without the selector's keys (they do not apply to a UNet-only run)."""
    return {key: value for key, value in config.items() if key not in SELECTOR_KEYS}


def run_config(train_config: TrainConfig, server_config_path: Path | None, unet: bool = False,
               **extra) -> dict[str, Any]:
    """The config that produced a run: its training config, rounds and any extra settings."""
    config = {**(unet_only(train_config.as_dict()) if unet else train_config.as_dict()), **extra}
    if server_config_path is not None and server_config_path.is_file():
        server = read_json(server_config_path)
        config["num_rounds"] = num_rounds_of(server, str(server_config_path))
        for key in ("soft_pull_lambda",):
            if key in server:
                config[key] = server[key]
    return config


@torch.no_grad()
def unet_dice_per_site(weights_loader, items: Mapping[str, list], config: TrainConfig, batch_size: int,
                       cache_rate: float, device: torch.device) -> dict[str, np.ndarray]:
    """`{site: per-image Dice}` of the UNet that `weights_loader(model)` fills, on each site's items."""
    model = build_unet()
    weights_loader(model)
    model.to(device).eval()
    result = {}
    for site, site_items in items.items():
        loader = make_loader(site_items, config.image_size, batch_size, shuffle=False, cache_rate=cache_rate,
                             num_workers=config.num_workers, seed=config.seed) if site_items else []
        scores = [dice_per_image(binarize(model(batch["image"].to(device))), batch["label"].to(device)).cpu().numpy()
                  for batch in loader]
        result[site] = np.concatenate(scores).astype(np.float64) if scores else np.zeros(0)
    return result


@dataclasses.dataclass
class FedSMRun:
    name: str
    setup: RunSetup
    config: dict[str, Any]
    per_site: dict[str, ImageResults]  # evaluated at threshold 0 (see `at_threshold`)
    workspace: Path
    validation: dict[str, float]  # best checkpoints' validation Dice: "global" and client name


def evaluate_fedsm(name: str, workspace: Path, items: Mapping[str, list], unseen: Sequence[str],
                   batch_size: int | None, cache_rate: float, device: torch.device) -> FedSMRun:
    setup = load_run_setup(find_server_app(workspace))
    models = load_best_models(setup, device)
    per_site = {}
    for site, site_items in items.items():
        label = UNSEEN_LABEL if site in unseen else setup.labels[site]
        per_site[site] = evaluate_site(site_items, label, models, setup, 0.0,
                                       batch_size or setup.train_config.batch_size, cache_rate, device,
                                       f"{name} {site}")
    config = run_config(setup.train_config, setup.models_dir / SERVER_CONFIG,
                        client_id_label_mapping=setup.labels)
    return FedSMRun(name, setup, config, per_site, Path(workspace), models.validation)


ROUTED_SUFFIX = "super model, routed by validation"


def fedsm_methods(run: FedSMRun, threshold: float, route_margin: float | None = None) -> list[MethodResult]:
    """The FedSM run as methods: global model only, the super model at `threshold`, and with
    `route_margin` the super model using only the personalized models that validation trusts."""
    available = list(run.setup.labels.values())
    source = str(run.setup.models_dir)
    global_only = {site: r.global_dice for site, r in run.per_site.items()}
    super_model = {site: at_threshold(r, threshold, available).super_dice for site, r in run.per_site.items()}
    methods = [MethodResult(f"{run.name} global only", global_only, run.config, source, "selector threshold 1"),
               MethodResult(f"{run.name} super model", super_model, run.config, source,
                            f"selector threshold {threshold:g}")]
    if route_margin is not None:
        trusted = trusted_sites(run.validation, run.setup.labels, route_margin)
        names = [short(client) for client, label in run.setup.labels.items() if label in trusted]
        routed = {site: at_threshold(r, threshold, trusted).super_dice for site, r in run.per_site.items()}
        methods.append(MethodResult(f"{run.name} {ROUTED_SUFFIX}", routed, run.config, source,
                                    f"selector threshold {threshold:g}; validation margin {route_margin:g}: "
                                    f"personalized models of {', '.join(names) or 'no site'}"))
    return methods


def evaluate_fedavg(workspace: Path, items: Mapping[str, list], batch_size: int | None, cache_rate: float,
                    device: torch.device) -> MethodResult:
    app = find_server_app(workspace)
    config = TrainConfig.from_file(app / "config" / "config_train.json")
    cross_val_path = app.parent / CROSS_VAL_RESULTS
    cross_val = read_json(cross_val_path) if cross_val_path.is_file() else None
    if cross_val is None:
        logger.warning("FedAvg: no GlobalModelEval results at %s; testing NVFlare's best model", cross_val_path)
    available = [name for name in (FEDAVG_BEST, FEDAVG_FINAL) if (app / name).is_file()]
    chosen, scores = choose_fedavg_checkpoint(cross_val, available)

    def load(model):
        path = app / chosen
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)["model"]
            model.load_state_dict(state, strict=True)
        except Exception as error:
            raise CheckpointError(f"cannot load the FedAvg UNet from {path}: {error}") from error

    per_site = unet_dice_per_site(load, items, config, batch_size or config.batch_size, cache_rate, device)
    note = f"{chosen}" + (f" (validation Dice {scores[chosen]:.4f})" if chosen in scores else "")
    run = run_config(config, app / SERVER_CONFIG, unet=True, checkpoint=chosen,
                     validation_dice={name: round(value, 6) for name, value in scores.items()})
    return MethodResult("FedAvg", per_site, run, str(app), note)


def baseline_config(results_path: Path) -> tuple[TrainConfig, dict[str, Any]]:
    results = read_json(results_path)
    config = TrainConfig.from_dict(results["config"], source=str(results_path))
    return config, {**unet_only(config.as_dict()), "num_rounds": results["num_rounds"], "best_round": results["best_round"],
                    "best_val_dice": results["best_val_dice"]}


def evaluate_centralized(folder: Path, items: Mapping[str, list], batch_size: int | None, cache_rate: float,
                         device: torch.device) -> MethodResult:
    config, record = baseline_config(folder / RESULTS_NAME)
    per_site = unet_dice_per_site(lambda model: load_weights_into(model, folder / BEST_NAME, "segmentation UNet"),
                                  items, config, batch_size or config.batch_size, cache_rate, device)
    return MethodResult("centralized", per_site, record, str(folder),
                        f"{POOLED_DATALIST}, best round {record['best_round']}")


def evaluate_local(folder: Path, items: Mapping[str, list], sites: Sequence[str], batch_size: int | None,
                   cache_rate: float, device: torch.device) -> MethodResult:
    """Each site's local model on that site's own test images (unseen sites: none)."""
    per_site, configs = {}, {}
    for site in items:
        if site not in sites:
            per_site[site] = np.full(len(items[site]), math.nan)
            continue
        site_folder = folder / site
        config, configs[site] = baseline_config(site_folder / RESULTS_NAME)
        per_site.update(unet_dice_per_site(
            lambda model, path=site_folder / BEST_NAME: load_weights_into(model, path, "segmentation UNet"),
            {site: items[site]}, config, batch_size or config.batch_size, cache_rate, device))
    first = next(iter(configs.values()), {})
    record = {**{k: v for k, v in first.items() if k not in ("best_round", "best_val_dice")},
              "best_round": {site: c["best_round"] for site, c in configs.items()}}
    return MethodResult("local", per_site, record, str(folder), "each site's own model")


def selector_curves(run: FedSMRun) -> dict[str, dict[int, float]]:
    """`{tag: {round: mean over clients}}` of the selector's validation accuracy and confidence."""
    try:
        dirs = find_event_dirs(run.workspace)
    except FileNotFoundError:
        return {}
    sums: dict[str, dict[int, list[float]]] = {tag: {} for tag in SELECTOR_TAGS}
    for folder in dirs.values():
        for tag, (steps, values) in read_scalars(folder, SELECTOR_TAGS).items():
            for step, value in zip(steps.tolist(), values.tolist()):
                sums[tag].setdefault(int(step), []).append(value)
    return {tag: {step: float(np.mean(values)) for step, values in sorted(by_step.items())}
            for tag, by_step in sums.items() if by_step}


# ---------------------------------------------------------------------------------------------
# Output: tables, plots
# ---------------------------------------------------------------------------------------------

def fmt(value: float, digits: int = 4) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def fmt_signed(value: float | None) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:+.4f}"


def fmt_mean_std(mean: float, std: float) -> str:
    """`mean ± std`, or the mean alone where there is no spread (one seed)."""
    return fmt(mean) if not math.isfinite(std) or not math.isfinite(mean) else f"{mean:.4f} ± {std:.4f}"


def routing_sentence(run: str, row: Mapping[str, Any]) -> str:
    """Which sites' personalized models validation trusts in `run`, with the validation Dice."""
    trusted = ", ".join(short(client) for client in row["personalized_sites"]) or "no site"
    dice = ", ".join(f"{short(key)} {fmt(value)}" for key, value in row["validation_dice"].items())
    return f"{run}: personalized models of {trusted} (validation Dice {dice})"


def interval(low: float | None, high: float | None) -> str:
    return "-" if low is None or high is None else f"[{low:+.4f}, {high:+.4f}]"


def pct(value: float) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.1%}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def text_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    line = lambda cells: "  ".join(f"{cell:<{w}}" if i == 0 else f"{cell:>{w}}" for i, (cell, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(header), "-" * (sum(widths) + 2 * (len(widths) - 1)), *(line(row) for row in rows)])


def csv_text(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def short(site: str) -> str:
    return site.removeprefix("client_")


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
    axis.set_xticks(x, [short(c) + (" (unseen)" if c in unseen else "") for c in columns], fontsize=9)
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
    axis.set_yticks(range(len(rows)), [short(r) + (" (unseen)" if r in unseen else "") for r in rows], fontsize=9)
    axis.set_xlabel("selector's top site")
    axis.set_ylabel("true site")
    axis.set_title("Selector confusion matrix (test images)")
    figure.colorbar(image, ax=axis, fraction=0.046, label="share of the row")
    return figure


def plot_selector_rounds(curves: Mapping[str, Mapping[str, Mapping[int, float]]]) -> Figure:
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


def method_value(method: MethodResult, column: str) -> float:
    if column == POOLED:
        return method.pooled
    return method.per_site.get(column, (0, math.nan))[1]


# ---------------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------------

def find_unseen(datalist_dir: Path, sites: Sequence[str]) -> list[str]:
    """Datalists `client_*.json` in `datalist_dir` other than the run's sites and the pooled one."""
    names = sorted(path.stem for path in datalist_dir.glob("client_*.json"))
    return [name for name in names if name not in sites and name != POOLED_DATALIST]


def site_items(datalist_dir: Path, base_dir: Path, sites: Sequence[str], unseen: Sequence[str],
               unseen_splits: Sequence[str]) -> dict[str, list[dict[str, str]]]:
    items = {site: test_items(datalist_dir, base_dir, site) for site in sites}
    for name in unseen:
        lists = load_datalist(datalist_file(datalist_dir, name), base_dir, tuple(unseen_splits))
        items[name] = [pair for split in unseen_splits for pair in lists[split]]
        check_images_readable(items[name])
    return items


def budget_differences(configs: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Lines naming each budget/data setting on which the runs disagree."""
    lines = []
    for key in (*BUDGET_KEYS, "num_rounds"):
        values = {name: config.get(key) for name, config in configs.items() if key in config}
        if len({json.dumps(value) for value in values.values()}) > 1:
            lines.append(f"{key}: " + ", ".join(f"{name} = {value}" for name, value in values.items()))
    return lines


def evaluate_seed(args: argparse.Namespace, index: int, items: Mapping[str, list], sites: Sequence[str],
                  unseen: Sequence[str], device: torch.device) -> tuple[list[FedSMRun], list[MethodResult]]:
    """The runs of the `index`-th seed: every FedSM run, and each method's test Dice."""
    runs = [evaluate_fedsm(MAIN_NAME, Path(args.fedsm[index]), items, unseen, args.batch_size, args.cache_rate,
                           device)]
    for name, workspaces in variant_workspaces(args.fedsm_variant).items():
        runs.append(evaluate_fedsm(f"FedSM[{name}]", Path(workspaces[index]), items, unseen, args.batch_size,
                                   args.cache_rate, device))
        if list(runs[-1].setup.labels) != list(sites):
            raise ValueError(f"FedSM run {workspaces[index]} has sites {list(runs[-1].setup.labels)}, not {sites}")
    methods: list[MethodResult] = []
    if args.local:
        methods.append(evaluate_local(Path(args.local[index]), items, sites, args.batch_size, args.cache_rate, device))
    if args.fedavg:
        methods.append(evaluate_fedavg(Path(args.fedavg[index]), items, args.batch_size, args.cache_rate, device))
    if args.centralized:
        methods.append(evaluate_centralized(Path(args.centralized[index]), items, args.batch_size, args.cache_rate,
                                            device))
    for run in runs:
        methods += fedsm_methods(run, args.select_threshold, args.route_by_validation)
    for method in methods:
        method.pooled = pooled_mean({site: method.per_site[site] for site in sites})[1]
    return runs, methods


def mean_over_seeds(per_seed: Sequence[MethodResult], sites: Sequence[str]) -> MethodResult:
    """One method over seeds: per test image the mean Dice over seeds (the same images in every seed),
    so every site and pooled mean is the mean over seeds; config and source of the first seed."""
    first = per_seed[0]
    dice = {site: np.mean([method.dice[site] for method in per_seed], axis=0) for site in first.dice}
    mean = dataclasses.replace(first, dice=dice)
    mean.pooled = pooled_mean({site: mean.per_site[site] for site in sites})[1]
    return mean


def seed_stds(per_seed: Sequence[MethodResult], columns: Sequence[str]) -> dict[str, float]:
    """`{column: standard deviation over seeds}` of one method's site and pooled Dice."""
    return {column: mean_std([method_value(method, column) for method in per_seed])[1] for column in columns}


def comparison_pairs(runs: Sequence[FedSMRun], names: Sequence[str]) -> list[tuple[str, str]]:
    """The paired comparisons of the report, among the methods present: each super model against FedAvg,
    centralized and its own global model; the validation-routed one against the super model and the
    global model."""
    pairs = []
    for run in runs:
        super_model, global_only = f"{run.name} super model", f"{run.name} global only"
        routed = f"{run.name} {ROUTED_SUFFIX}"
        pairs += [(super_model, "FedAvg"), (super_model, "centralized"), (super_model, global_only),
                  (routed, super_model), (routed, global_only)]
    return [(a, b) for a, b in pairs if a in names and b in names]


def run_label(run: FedSMRun) -> str:
    """The run's name with its selector-training mode, e.g. `FedSM (client_adam)`."""
    mode = run.config.get("selector_training", "")
    return run.name if not mode or mode in run.name else f"{run.name} ({mode})"


def build_report(args: argparse.Namespace) -> dict[str, Any]:
    device = choose_device()  # float32 whatever the runs' `amp`: one instrument for every method
    main_name = MAIN_NAME
    fedsm_setup = load_run_setup(find_server_app(args.fedsm[0]))
    config = fedsm_setup.train_config
    base_dir = resolve_path(args.dataset_base_dir or config.dataset_base_dir, "dataset_base_dir")
    datalist_dir = resolve_path(args.datalist_json_path or config.datalist_json_path, "datalist_json_path")
    sites = list(fedsm_setup.labels)
    unseen = list(args.unseen) if args.unseen is not None else find_unseen(datalist_dir, sites)
    items = site_items(datalist_dir, base_dir, sites, unseen, args.unseen_splits)
    logger.info("sites %s, unseen %s (%s), device %s, %d seed(s)", sites, unseen, "+".join(args.unseen_splits),
                device, len(args.fedsm))

    evaluated = [evaluate_seed(args, index, items, sites, unseen, device) for index in range(len(args.fedsm))]
    runs = evaluated[0][0]  # routing, confusion, sweep and selector curves: the first seed's runs
    per_seed = {seed_runs[0].name: list(seed_runs) for seed_runs in zip(*(methods for _, methods in evaluated))}
    methods = [mean_over_seeds(results, sites) for results in per_seed.values()]
    columns = [*sites, POOLED, *unseen]
    stds = {name: seed_stds(results, columns) for name, results in per_seed.items()}
    pooled_runs = {name: [m.pooled_dice(sites) for m in results] for name, results in per_seed.items()}
    comparisons = [compare(a, b, pooled_runs[a], pooled_runs[b]) for a, b in comparison_pairs(runs, list(per_seed))]
    by_pair = {(c.method, c.other): c for c in comparisons}
    evidence_lines = [evidence(run_label(run), by_pair.get((f"{run.name} super model", "FedAvg")),
                               by_pair.get((f"{run.name} super model", "centralized"))) for run in runs]

    main_run = runs[0]
    available = list(main_run.setup.labels.values())
    class_names = sites
    thresholds = sorted(set(args.thresholds) | {args.select_threshold, 1.0})
    sweep = []
    for run in runs:
        for threshold in thresholds:
            routed = {site: at_threshold(r, threshold, available) for site, r in run.per_site.items()}
            summaries = {site: summarize(site, r) for site, r in routed.items()}
            summaries[POOLED] = summarize(POOLED, ImageResults.concat([routed[site] for site in sites]))
            for site in [*sites, POOLED, *unseen]:
                row = summaries[site]
                sweep.append({"run": run.name, "threshold": threshold, "site": site, "unseen": site in unseen,
                              "images": row.images, "super_dice": row.super_dice,
                              "personalized_share": row.personalized_share})
    confusion = {run.name: confusion_counts(run.per_site, len(class_names)) for run in runs}
    routing = {}
    for run in runs:
        routed = {site: at_threshold(r, args.select_threshold, available) for site, r in run.per_site.items()}
        routing[run.name] = {site: {"images": len(r), **routing_shares(r, available),
                                    "selector_accuracy": (summarize(site, r).selector_accuracy
                                                          if site not in unseen else math.nan),
                                    "mean_top_probability": float(r.confidence.mean()) if len(r) else math.nan,
                                    "super_dice": summarize(site, r).super_dice,
                                    "global_dice": summarize(site, r).global_dice}
                             for site, r in routed.items()}
    curves = {run.name: selector_curves(run) for run in runs}

    by_name = {method.name: method for method in methods}
    local = by_name.get("local")
    fedavg = by_name.get("FedAvg")
    centralized = by_name.get("centralized")
    super_main = by_name[f"{main_name} super model"]
    variants = {run.name: by_name[f"{run.name} super model"].pooled for run in runs[1:]}
    verdict, closed = gap_verdict(local.pooled if local else math.nan, fedavg.pooled if fedavg else math.nan,
                                  centralized.pooled if centralized else math.nan, super_main.pooled, variants)
    noise = noise_note(fedavg.pooled if fedavg else math.nan, by_name[f"{main_name} global only"].pooled)
    configs = {method.name: method.config for method in methods
               if "global only" not in method.name and ROUTED_SUFFIX not in method.name}
    differences = budget_differences({name.replace(" super model", ""): c for name, c in configs.items()})

    output = Path(args.output).expanduser()
    results = {
        "created": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
        "device": str(device),
        "select_threshold": args.select_threshold,
        "sites": sites,
        "unseen_sites": unseen,
        "unseen_splits": list(args.unseen_splits),
        "test_split": TEST_SPLIT,
        "dataset_base_dir": str(base_dir),
        "datalist_json_path": str(datalist_dir),
        "seeds": len(args.fedsm),
        "evidence": evidence_lines,
        "verdict": verdict,
        "noise_note": noise,
        "gap_closed_fraction": None if not math.isfinite(closed) else closed,
        "budget_differences": differences,
        "methods": [{"name": m.name, "source": m.source, "note": m.note, "seed": m.config.get("seed"),
                     "config": m.config, "pooled_dice": none_if_nan(m.pooled),
                     "sites": {site: {"images": n, "dice": none_if_nan(d)} for site, (n, d) in m.per_site.items()},
                     "seed_runs": [{"seed": r.config.get("seed"), "source": r.source,
                                    "pooled_dice": none_if_nan(r.pooled),
                                    "sites": {site: none_if_nan(d) for site, (_, d) in r.per_site.items()}}
                                   for r in per_seed[m.name]],
                     "std_over_seeds": {c: none_if_nan(v) for c, v in stds[m.name].items()}}
                    for m in methods],
        "paired_comparisons": [{k: none_if_nan(v) for k, v in dataclasses.asdict(c).items()} for c in comparisons],
        "route_by_validation": None if args.route_by_validation is None else {
            "margin": args.route_by_validation,
            "runs": {run.name: {"validation_dice": {k: none_if_nan(v) for k, v in run.validation.items()},
                                "personalized_sites": [client for client, label in run.setup.labels.items()
                                                       if label in trusted_sites(run.validation, run.setup.labels,
                                                                                 args.route_by_validation)]}
                     for run in runs}},
        "threshold_sweep": [{k: none_if_nan(v) for k, v in row.items()} for row in sweep],
        "confusion_matrix": {"classes": class_names, "counts": confusion},
        "routing": {run: {site: {k: none_if_nan(v) for k, v in row.items()} for site, row in by_site.items()}
                    for run, by_site in routing.items()},
        "selector_rounds": {run: {tag: {str(k): v for k, v in by_round.items()} for tag, by_round in tags.items()}
                            for run, tags in curves.items()},
    }
    write_outputs(output, results, methods, per_seed, stds, columns, sites, unseen, sweep, confusion, routing,
                  curves, class_names, args.select_threshold)
    return results


def none_if_nan(value):
    return None if isinstance(value, float) and not math.isfinite(value) else value


def write_outputs(output: Path, results: dict[str, Any], methods: Sequence[MethodResult],
                  per_seed: Mapping[str, Sequence[MethodResult]], stds: Mapping[str, Mapping[str, float]],
                  columns: Sequence[str], sites: Sequence[str], unseen: Sequence[str], sweep: Sequence[dict],
                  confusion: dict, routing: dict, curves: dict, class_names: Sequence[str], threshold: float) -> None:
    output.mkdir(parents=True, exist_ok=True)
    main_run = next(iter(confusion))
    available = [str(label) for label in range(len(class_names))]

    # Dice table
    header = ["method", *(short(c) + (" (unseen)" if c in unseen else "") for c in columns)]
    seeds = results["seeds"]
    dice_rows = [[m.name, *(fmt_mean_std(method_value(m, c), stds[m.name][c]) for c in columns)] for m in methods]
    dice_csv = [[m.name, c, (m.per_site.get(c, (sum(m.per_site[s][0] for s in sites), 0))[0]),
                 fmt(method_value(m, c), 6), c in unseen, index, m.config.get("seed"), m.config.get("num_rounds"),
                 m.config.get("local_epochs"), m.config.get("image_size"), m.note]
                for name, runs in per_seed.items() for index, m in enumerate(runs) for c in columns]
    write_text_atomic(output / "dice_table.csv", csv_text(
        ["method", "site", "images", "test_dice", "unseen", "seed_run", "seed", "num_rounds", "local_epochs",
         "image_size", "note"], dice_csv))
    summary_csv = [[m.name, c, seeds, fmt(method_value(m, c), 6), fmt(stds[m.name][c], 6), c in unseen]
                   for m in methods for c in columns]
    write_text_atomic(output / "dice_summary.csv", csv_text(
        ["method", "site", "seeds", "mean_test_dice", "std_over_seeds", "unseen"], summary_csv))
    comparisons = results["paired_comparisons"]
    comparison_csv = [[c["method"], c["other"], c["seeds"], *(fmt(c[key], 6) for key in COMPARISON_KEYS)]
                      for c in comparisons]
    write_text_atomic(output / "paired_comparisons.csv", csv_text(
        ["method", "other", "seeds", "pooled_difference", "t95_low", "t95_high", "bootstrap95_low",
         "bootstrap95_high"], comparison_csv))
    sweep_rows = [[row["run"], row["threshold"], row["site"], row["unseen"], row["images"], fmt(row["super_dice"], 6),
                   fmt(row["personalized_share"], 6)] for row in sweep]
    write_text_atomic(output / "threshold_sweep.csv", csv_text(
        ["run", "threshold", "site", "unseen", "images", "super_dice", "personalized_share"], sweep_rows))
    confusion_rows = [[run, site, site in unseen, *counts] for run, by_site in confusion.items()
                      for site, counts in by_site.items()]
    write_text_atomic(output / "confusion_matrix.csv", csv_text(
        ["run", "true_site", "unseen", *(f"predicted_{c}" for c in class_names)], confusion_rows))
    routing_rows = [[run, site, site in unseen, row["images"], fmt(row["global"], 6),
                     *(fmt(row[label], 6) for label in available), fmt(row["selector_accuracy"], 6),
                     fmt(row["mean_top_probability"], 6), fmt(row["super_dice"], 6), fmt(row["global_dice"], 6)]
                    for run, by_site in routing.items() for site, row in by_site.items()]
    write_text_atomic(output / "routing.csv", csv_text(
        ["run", "site", "unseen", "images", "share_global", *(f"share_{c}" for c in class_names),
         "selector_accuracy", "mean_top_probability", "super_dice", "global_dice"], routing_rows))
    selector_rows = [[run, tag, step, f"{value:.6f}"] for run, tags in curves.items()
                     for tag, by_round in tags.items() for step, value in by_round.items()]
    write_text_atomic(output / "selector_rounds.csv", csv_text(["run", "tag", "round", "mean_over_clients"],
                                                               selector_rows))
    write_text_atomic(output / "results.json", json.dumps(results, indent=2) + "\n")

    # plots
    save_png(plot_dice_bars(methods, columns, unseen, stds, len(next(iter(per_seed.values())))),
             output / "dice_per_site.png")
    references = {m.name: m.pooled for m in methods if m.name in ("FedAvg", "centralized", "local")}
    save_png(plot_threshold_curve([row for row in sweep if row["run"] == main_run], references, threshold, main_run),
             output / "threshold_curve.png")
    save_png(plot_confusion(confusion[main_run], class_names, unseen), output / "confusion_matrix.png")
    if any(curves.values()):
        save_png(plot_selector_rounds(curves), output / "selector_accuracy.png")

    # markdown
    md = ["# Generalization gap report", "",
          f"Created {results['created']} on {results['device']}. Test data: the `{TEST_SPLIT}` split of "
          f"{', '.join(short(s) for s in sites)}"
          + (f"; unseen site(s) {', '.join(short(u) for u in unseen)} (splits: {', '.join(results['unseen_splits'])}; "
             f"no part in training)" if unseen else "") + f", from `{results['datalist_json_path']}`.", "",
          *(f"**{line}**" for line in results["evidence"]), "",
          f"{results['verdict']}", "", *([results["noise_note"], ""] if results["noise_note"] else []),
          "## Test Dice per site", "",
          f"Mean foreground Dice over test images; *pooled* = all test images of the training sites. "
          f"Super model: selector threshold {threshold:g}."
          + (f" Mean ± standard deviation over {seeds} seeds (`train.seed`: initialization and data order; "
             f"same data split)." if seeds > 1 else " One seed."), "",
          markdown_table(header, dice_rows), ""]
    if results["route_by_validation"]:
        routed = results["route_by_validation"]
        md += [f"*routed by validation* (beyond the paper): a site's personalized model is used only where its "
               f"best checkpoint's validation Dice beats the best global model's by more than "
               f"{routed['margin']:g}; images the selector sends elsewhere go to the global model. "
               + ("First seed: " if seeds > 1 else "")
               + "; ".join(routing_sentence(run, row) for run, row in routed["runs"].items()) + ".", ""]
    if comparisons:
        md += ["## Paired comparisons (pooled test Dice)", "",
               "Difference of the pooled test Dice, same seed and same test images; 95% intervals: Student's t "
               "over the per-seed differences (needs two or more seeds), and a bootstrap over test images of the "
               "seed-mean per-image difference (image sampling noise only).", "",
               markdown_table(["method", "minus", "seeds", "difference", "95% t-interval (seeds)",
                               "95% bootstrap (images)"],
                              [[c["method"], c["other"], str(c["seeds"]), fmt_signed(c["difference"]),
                                interval(c["t_low"], c["t_high"]), interval(c["bootstrap_low"], c["bootstrap_high"])]
                               for c in comparisons]), ""]
    if seeds > 1:
        md += ["The sections below show the first seed's runs.", ""]
    if results["budget_differences"]:
        md += ["**Warning: the runs differ in budget or data settings:**", "",
               *(f"- {line}" for line in results["budget_differences"]), ""]
    for run, by_site in routing.items():
        md += [f"## {run}: routing at threshold {threshold:g}", "",
               "Share of each site's test images the super model sends to the global model or to a site's "
               "personalized model; *selector acc* = top label is the image's own site.", ""]
        rheader = ["site", "images", "global", *(f"→ {short(c)}" for c in class_names), "personalized",
                   "selector acc", "mean top p", "super Dice", "global Dice"]
        rrows = [[short(site) + (" (unseen)" if site in unseen else ""), str(row["images"]), pct(row["global"]),
                  *(pct(row[label]) for label in available), pct(1 - row["global"]), pct(row["selector_accuracy"]),
                  fmt(row["mean_top_probability"], 3), fmt(row["super_dice"]), fmt(row["global_dice"])]
                 for site, row in by_site.items()]
        md += [markdown_table(rheader, rrows), ""]
    md += ["## Selector confusion matrix (test images)", "",
           "Rows: true site; columns: the selector's top site (count, share of the row).", ""]
    for run, by_site in confusion.items():
        cheader = [f"{run}: true \\ top", *(short(c) for c in class_names)]
        crows = [[short(site) + (" (unseen)" if site in unseen else ""),
                  *(f"{n} ({n / max(sum(counts), 1):.0%})" for n in counts)] for site, counts in by_site.items()]
        md += [markdown_table(cheader, crows), ""]
    md += ["## Threshold sweep", "",
           "Super-model test Dice (share routed to personalized models) by selector threshold; "
           "threshold 1 = global model only.", ""]
    for run in confusion:
        run_rows = [row for row in sweep if row["run"] == run]
        sweep_sites = list(dict.fromkeys(row["site"] for row in run_rows))
        sheader = [f"{run}: threshold", *(short(s) + (" (unseen)" if s in unseen else "") for s in sweep_sites)]
        srows = []
        for t in sorted({row["threshold"] for row in run_rows}):
            cells = {row["site"]: row for row in run_rows if row["threshold"] == t}
            srows.append([f"{t:g}", *(f"{fmt(cells[s]['super_dice'])} ({pct(cells[s]['personalized_share'])})"
                                      for s in sweep_sites)])
        md += [markdown_table(sheader, srows), ""]
    if any(curves.values()):
        md += ["## Selector training per round", "",
               "Mean over clients of the selector's validation accuracy and its confidence in the own site "
               "(`selector_accuracy.png`, `selector_rounds.csv`).", ""]
        sheader = ["run", "rounds", "final accuracy", "final confidence", "first round with accuracy 100%"]
        srows = []
        for run, tags in curves.items():
            accuracy = tags.get("val_metric_select_model", {})
            confidence = tags.get("val_confidence_select_model", {})
            full = next((str(step) for step, value in accuracy.items() if value >= 1.0), "-")
            last = max(accuracy) if accuracy else None
            srows.append([run, str(len(accuracy)), pct(accuracy[last]) if last is not None else "-",
                          fmt(confidence.get(last, math.nan), 3) if last is not None else "-", full])
        md += [markdown_table(sheader, srows), ""]
    md += ["## Runs, configs and seeds", ""]
    for m in results["methods"]:
        if m["name"].endswith("global only"):
            continue
        config = {k: v for k, v in m["config"].items() if k not in ("dataset_base_dir", "datalist_json_path")}
        if ROUTED_SUFFIX in m["name"]:
            continue
        seeds_of = ", ".join(str(r["seed"]) for r in m["seed_runs"])
        sources = "`, `".join(r["source"] for r in m["seed_runs"])
        md += [f"- **{m['name'].replace(' super model', '')}** (seed {seeds_of}): `{sources}`"
               + (f"; {m['note']}" if m["note"] else ""), f"  `{json.dumps(config, sort_keys=True)}`"]
    md += ["", "Files: `dice_table.csv` (per seed), `dice_summary.csv`, `paired_comparisons.csv`, "
           "`threshold_sweep.csv`, `confusion_matrix.csv`, `routing.csv`, "
           "`selector_rounds.csv`, `results.json`; plots `dice_per_site.png`, `threshold_curve.png`, "
           "`confusion_matrix.png`" + (", `selector_accuracy.png`" if any(curves.values()) else "") + ".", ""]
    write_text_atomic(output / "report.md", "\n".join(md))
    print(text_table(header, dice_rows))
    print(results["verdict"])
    print(f"Report: {output / 'report.md'}")


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
