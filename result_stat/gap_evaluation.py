"""The gap report's evaluation: every finished run's models on the test images, with the config that
produced each run (nothing is trained here).

- FedSM: the run's best checkpoints with the routing of `result_stat.prostate_2d_test_only`,
  evaluated once at threshold 0 and re-routed for any threshold (`gap_routing.at_threshold`);
- FedAvg: the final or NVFlare's best global model, whichever validated better;
- centralized and local: the best models of `result_stat.baselines`.
"""

import dataclasses
import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fedsm.config import TrainConfig
from fedsm.core.dice import binarize, dice_per_image, mean_dice
from fedsm.data.datalist import check_images_readable, datalist_file, load_datalist
from fedsm.data.loading import make_loader
from fedsm.evaluation import UNKNOWN_SITE, ImageResults
from fedsm.io.checkpoint import CheckpointError
from fedsm.models.networks import build_unet
from result_stat.baselines import BEST_NAME, POOLED_DATALIST, RESULTS_NAME, num_rounds_of
from result_stat.gap_format import short
from result_stat.gap_routing import at_threshold
from result_stat.gap_stats import POOLED, mean_std, pooled_mean
from result_stat.plot_tensorboard_events import read_scalars
from result_stat.prostate_2d_test_only import (
    RunSetup,
    evaluate_site,
    load_best_models,
    load_run_setup,
    load_weights_into,
    test_items,
    trusted_sites,
)
from result_stat.workspace import SERVER_CONFIG, find_event_dirs, find_server_app

FEDAVG_FINAL, FEDAVG_BEST = "FL_global_model.pt", "best_FL_global_model.pt"
CROSS_VAL_RESULTS = Path("cross_site_val") / "cross_val_results.json"
SERVER_MODEL_PREFIX = "SRV_"
SELECTOR_TAGS = ("val_metric_select_model", "val_confidence_select_model")
SELECTOR_KEYS = ("learning_rate_select", "selector_local_epochs", "selector", "select_num_classes",
                 "selector_training")
# settings that must agree for a fair comparison (same data, preprocessing, budget, initialization)
BUDGET_KEYS = ("image_size", "local_epochs", "batch_size", "learning_rate", "seed", "dataset_base_dir",
               "datalist_json_path")
ROUTED_SUFFIX = "super model, routed by validation"

logger = logging.getLogger("gap_report")


@dataclasses.dataclass(frozen=True)
class Inference:
    """How models are run on the test images: batch size (None: each run's), cache rate, device."""

    batch_size: int | None
    cache_rate: float
    device: torch.device

    def batch_size_for(self, config: TrainConfig) -> int:
        return self.batch_size or config.batch_size


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


def method_value(method: MethodResult, column: str) -> float:
    """The method's mean Dice in a report column: a site, or pooled."""
    if column == POOLED:
        return method.pooled
    return method.per_site.get(column, (0, math.nan))[1]


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"cannot read {path}: {error}") from error


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


def budget_differences(configs: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Lines naming each budget/data setting on which the runs disagree."""
    lines = []
    for key in (*BUDGET_KEYS, "num_rounds"):
        values = {name: config.get(key) for name, config in configs.items() if key in config}
        if len({json.dumps(value) for value in values.values()}) > 1:
            lines.append(f"{key}: " + ", ".join(f"{name} = {value}" for name, value in values.items()))
    return lines


def find_unseen(datalist_dir: Path, sites: Sequence[str]) -> list[str]:
    """Datalists `client_*.json` in `datalist_dir` other than the run's sites and the pooled one."""
    names = sorted(path.stem for path in datalist_dir.glob("client_*.json"))
    return [name for name in names if name not in sites and name != POOLED_DATALIST]


def site_items(datalist_dir: Path, base_dir: Path, sites: Sequence[str], unseen: Sequence[str],
               unseen_splits: Sequence[str]) -> dict[str, list[dict[str, str]]]:
    """`{site: test items}`: the test split of each site, every split of `unseen_splits` of each unseen site."""
    items = {site: test_items(datalist_dir, base_dir, site) for site in sites}
    for name in unseen:
        lists = load_datalist(datalist_file(datalist_dir, name), base_dir, tuple(unseen_splits))
        items[name] = [pair for split in unseen_splits for pair in lists[split]]
        check_images_readable(items[name])
    return items


@torch.no_grad()
def unet_dice_per_site(weights_loader: Callable[[nn.Module], Any], items: Mapping[str, list], config: TrainConfig,
                       inference: Inference) -> dict[str, np.ndarray]:
    """`{site: per-image Dice}` of the UNet that `weights_loader(model)` fills, on each site's items."""
    model = build_unet()
    weights_loader(model)
    model.to(inference.device).eval()
    result = {}
    for site, pairs in items.items():
        loader = make_loader(pairs, config.image_size, inference.batch_size_for(config), shuffle=False,
                             cache_rate=inference.cache_rate, num_workers=config.num_workers,
                             seed=config.seed) if pairs else []
        scores = [dice_per_image(binarize(model(batch["image"].to(inference.device))),
                                 batch["label"].to(inference.device)).cpu().numpy()
                  for batch in loader]
        result[site] = np.concatenate(scores).astype(np.float64) if scores else np.zeros(0)
    return result


@dataclasses.dataclass
class FedSMRun:
    name: str
    setup: RunSetup
    config: dict[str, Any]
    per_site: dict[str, ImageResults]  # evaluated at threshold 0 (see `gap_routing.at_threshold`)
    workspace: Path
    validation: dict[str, float]  # best checkpoints' validation Dice: GLOBAL and client name


def evaluate_fedsm(name: str, workspace: Path, items: Mapping[str, list], unseen: Sequence[str],
                   inference: Inference) -> FedSMRun:
    setup = load_run_setup(find_server_app(workspace))
    models = load_best_models(setup, inference.device)
    per_site = {}
    for site, pairs in items.items():
        label = UNKNOWN_SITE if site in unseen else setup.labels[site]
        per_site[site] = evaluate_site(pairs, label, models, setup, 0.0,
                                       inference.batch_size_for(setup.train_config), inference.cache_rate,
                                       inference.device, f"{name} {site}")
    config = run_config(setup.train_config, setup.models_dir / SERVER_CONFIG,
                        client_id_label_mapping=setup.labels)
    return FedSMRun(name, setup, config, per_site, Path(workspace), models.validation)


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


def evaluate_fedavg(workspace: Path, items: Mapping[str, list], inference: Inference) -> MethodResult:
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

    per_site = unet_dice_per_site(load, items, config, inference)
    note = f"{chosen}" + (f" (validation Dice {scores[chosen]:.4f})" if chosen in scores else "")
    run = run_config(config, app / SERVER_CONFIG, unet=True, checkpoint=chosen,
                     validation_dice={name: round(value, 6) for name, value in scores.items()})
    return MethodResult("FedAvg", per_site, run, str(app), note)


def baseline_config(results_path: Path) -> tuple[TrainConfig, dict[str, Any]]:
    results = read_json(results_path)
    config = TrainConfig.from_dict(results["config"], source=str(results_path))
    return config, {**unet_only(config.as_dict()), "num_rounds": results["num_rounds"],
                    "best_round": results["best_round"], "best_val_dice": results["best_val_dice"]}


def evaluate_centralized(folder: Path, items: Mapping[str, list], inference: Inference) -> MethodResult:
    config, record = baseline_config(folder / RESULTS_NAME)
    per_site = unet_dice_per_site(lambda model: load_weights_into(model, folder / BEST_NAME, "segmentation UNet"),
                                  items, config, inference)
    return MethodResult("centralized", per_site, record, str(folder),
                        f"{POOLED_DATALIST}, best round {record['best_round']}")


def evaluate_local(folder: Path, items: Mapping[str, list], sites: Sequence[str], inference: Inference) -> MethodResult:
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
            {site: items[site]}, config, inference))
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
