"""Test-only evaluation of the FedSM super model on the `testing` split of every site.

    python -m result_stat.prostate_2d_test_only --workspace /tmp/nvflare/fedsm_prostate
    python result_stat/prostate_2d_test_only.py --models_dir WS/server/simulate_job/app_server \
        --select_threshold 0.9 --output_json results.json
    python -m result_stat.prostate_2d_test_only --workspace WS --datalist_json_path DATA/datalist_2D/client_All.json
    python -m result_stat.prostate_2d_test_only --workspace WS --figures_dir figures   # and a picture per site

`--datalist_json_path` (default: the run's config) is either a folder of `client_<name>.json`
datalists, read for each site of the run, or one datalist JSON file as in the reference (e.g.
`client_All.json`), whose `testing` list is evaluated as one pooled set; its images carry no site,
so the selector's accuracy is not reported for them.

For each test image the selector's softmax gives a top site and its probability p; if p > threshold
the image is segmented by that site's best personalized model, else by the best global model (so a
threshold of 1.0 means the global model only). A site without a best personalized checkpoint (its
client left the run before its first validation) is warned about, and images routed to it fall back
to the global model. Segmentation: sigmoid, threshold 0.5; metric:
foreground Dice per image, averaged over images.

Beyond the paper, `--route_by_validation MARGIN` (off by default) keeps a site's personalized model
only where the run's own validation says it beats the global model by more than MARGIN Dice: the
`metric` of `best_personalized_model_<client>.pt` (that site's validation Dice) against that of
`best_global_model.pt` (the global model's validation Dice, averaged over the sites weighted by
their validation sizes). Images the selector sends to any other site go to the global model. These
records lie in the server app folder in every deployment mode; the clients' TensorBoard events stay
on each site's machine in a provisioned deployment. No test image takes part in the decision.

The sites, their selector labels and the model architectures come from the run's own saved config
(`config/config_fed_server.json` and `config/config_train.json` in the server app folder). Prints a
per-site table and, as its very last line, `Test Dice: 0.xxxx` (the pooled super-model mean Dice).
"""

import argparse
import dataclasses
import json
import logging
import math
import re
import sys
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fedsm.config import TrainConfig, resolve_path
from fedsm.data.datalist import DataError, check_images_readable, datalist_file, load_datalist
from fedsm.data.loading import make_loader
from fedsm.evaluation import (DEFAULT_THRESHOLD, TEST_SPLIT, UNKNOWN_SITE, ImageResults, SuperModel, evaluate_loader,
                              format_table, routing_note, summarize)
from fedsm.core.model_kinds import GLOBAL, PERSONALIZED, SELECTOR
from fedsm.evaluation_figure import draw_first_slices
from fedsm.io.checkpoint import best_checkpoint_name
from fedsm.core.label_mapping import check_label_mapping
from fedsm.io.atomic import write_text_atomic
from fedsm.io.checkpoint import CheckpointError, load_checkpoint
from fedsm.models.networks import build_selector, build_unet
from fedsm.models.weights import set_weights
from fedsm.runtime import choose_device
from result_stat.workspace import SERVER_CONFIG, TRAIN_CONFIG, find_server_app

FIGURE_SLICES = 4
logger = logging.getLogger("prostate_2d_test_only")


def trusted_sites(validation: Mapping[str, float], labels: Mapping[str, int], margin: float) -> list[int]:
    """Labels of the sites whose personalized model's validation Dice (`validation[client]`) beats the
    global model's (`validation[GLOBAL]`) by more than `margin`; a missing or NaN metric never does."""
    reference = validation.get(GLOBAL, math.nan)
    return [label for client, label in labels.items()
            if validation.get(client, math.nan) - reference > margin]  # NaN compares False


# ---------------------------------------------------------------------------------------------
# The run: configs, checkpoints, data
# ---------------------------------------------------------------------------------------------

class MissingCheckpointError(FileNotFoundError):
    """Best checkpoints missing from the server app folder; the message names them and lists what exists."""


@dataclasses.dataclass(frozen=True)
class RunSetup:
    models_dir: Path
    train_config: TrainConfig
    labels: dict[str, int]  # client name -> selector label, in label order


_VARIABLE = re.compile(r"^\{(\w+)\}$")


def _resolve_variable(value: Any, config: Mapping[str, Any]) -> Any:
    """An NVFlare `{name}` reference to a top-level variable of the config, replaced by its value."""
    if isinstance(value, str):
        match = _VARIABLE.match(value)
        if match and match.group(1) in config:
            return config[match.group(1)]
    return value


def read_label_mapping(server_config_path: Path) -> dict[str, Any]:
    """The `client_id_label_mapping` of the run's FedSM workflow in `config_fed_server.json`."""
    try:
        config = json.loads(server_config_path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"cannot read server config {server_config_path}: {error}") from error
    for workflow in config.get("workflows", []):
        args = workflow.get("args", {})
        if "client_id_label_mapping" in args:
            mapping = _resolve_variable(args["client_id_label_mapping"], config)
            if not isinstance(mapping, dict):
                raise ValueError(f"{server_config_path}: client_id_label_mapping must be an object, got {mapping!r}")
            return mapping
    raise ValueError(f"{server_config_path}: no workflow has a 'client_id_label_mapping' argument")


def load_run_setup(models_dir: Path) -> RunSetup:
    """The run's training config and its client -> label mapping, from the server app folder."""
    train_config_path = models_dir / TRAIN_CONFIG
    if not train_config_path.is_file():
        raise FileNotFoundError(f"training config not found: {train_config_path}")
    train_config = TrainConfig.from_file(train_config_path)
    server_config_path = models_dir / SERVER_CONFIG
    if not server_config_path.is_file():
        raise FileNotFoundError(f"server config not found: {server_config_path}")
    try:
        labels = check_label_mapping(read_label_mapping(server_config_path), train_config.select_num_classes)
    except ValueError as error:
        raise ValueError(f"{server_config_path}: {error}") from error
    return RunSetup(models_dir, train_config, dict(sorted(labels.items(), key=lambda item: item[1])))


def checkpoint_files(models_dir: Path, clients: Sequence[str]) -> dict[str, Path]:
    """The best checkpoints of the super model: `global`, `selector` and one per client name."""
    files = {GLOBAL: models_dir / best_checkpoint_name(GLOBAL),
             SELECTOR: models_dir / best_checkpoint_name(SELECTOR)}
    for client in clients:
        files[client] = models_dir / best_checkpoint_name(PERSONALIZED, client)
    return files


def check_checkpoints_exist(files: Mapping[str, Path], models_dir: Path) -> None:
    """Raise `MissingCheckpointError` naming every missing file of `files` and listing the checkpoints
    that exist."""
    missing = [path for path in files.values() if not path.is_file()]
    if not missing:
        return
    present = sorted(path.name for path in models_dir.glob("*.pt"))
    listing = ", ".join(present) if present else "no *.pt files"
    names = "\n  ".join(str(path) for path in missing)
    raise MissingCheckpointError(
        f"missing best checkpoint file(s):\n  {names}\n{models_dir} holds: {listing}"
    )


def load_weights_into(model: nn.Module, path: Path, description: str) -> dict[str, Any]:
    """Load the best checkpoint `path` into `model`; returns its metadata (metric, round)."""
    content = load_checkpoint(path)
    if "weights" not in content or not isinstance(content["weights"], dict):
        raise CheckpointError(f"checkpoint {path} has no 'weights' dict (keys: {sorted(content)})")
    try:
        set_weights(model, content["weights"])
    except (RuntimeError, KeyError, ValueError) as error:
        raise CheckpointError(
            f"checkpoint {path} does not fit the {description} built from config_train.json "
            f"(saved by another version of the fedsm code or another config?): {error}"
        ) from error
    return {key: content.get(key) for key in ("metric", "round")}


@dataclasses.dataclass
class BestModels:
    model: SuperModel
    validation: dict[str, float]  # GLOBAL and client name -> the checkpoint's validation metric

    def routed_by_validation(self, labels: Mapping[str, int], margin: float) -> "BestModels":
        """These models with only the personalized models of `trusted_sites` left."""
        trusted = trusted_sites(self.validation, labels, margin)
        personalized = {label: model for label, model in self.model.personalized.items() if label in trusted}
        return dataclasses.replace(self, model=dataclasses.replace(self.model, personalized=personalized))


def load_best_models(setup: RunSetup, device: torch.device) -> BestModels:
    """Build the architectures named in the run's config and load the best checkpoints into them."""
    files = checkpoint_files(setup.models_dir, list(setup.labels))
    check_checkpoints_exist({key: files[key] for key in (GLOBAL, SELECTOR)}, setup.models_dir)
    without = [client for client in setup.labels if not files[client].is_file()]
    for client in without:
        logger.warning("%s has no best personalized model (%s missing: the client never validated in this run); "
                       "images routed to it are segmented by the global model", client, files[client])
    config = setup.train_config
    models: dict[str, nn.Module] = {
        GLOBAL: build_unet(),
        SELECTOR: build_selector(config.selector, config.select_num_classes),
        **{client: build_unet() for client in setup.labels if client not in without},
    }
    validation = {}
    for key, model in models.items():
        if key == SELECTOR:
            description = f"'{config.selector}' selector with {config.select_num_classes} classes"
        else:
            description = "segmentation UNet"
        info = load_weights_into(model, files[key], description)
        validation[key] = float(info["metric"]) if isinstance(info["metric"], (int, float)) else math.nan
        logger.info("loaded %s (metric %s, round %s)", files[key].name, info["metric"], info["round"])
        model.to(device).eval()
    return BestModels(
        model=SuperModel(selector=models[SELECTOR], global_model=models[GLOBAL],
                         personalized={label: models[client] for client, label in setup.labels.items()
                                       if client in models}),
        validation={key: value for key, value in validation.items() if key != SELECTOR},
    )


def test_items(datalist_dir: Path, base_dir: Path, client: str) -> list[dict[str, str]]:
    """The `testing` image/label pairs of a client (files checked readable)."""
    return _testing(datalist_file(datalist_dir, client), base_dir)


def _testing(datalist: Path, base_dir: Path) -> list[dict[str, str]]:
    items = load_datalist(datalist, base_dir, splits=(TEST_SPLIT,))[TEST_SPLIT]
    check_images_readable(items)
    return items


@dataclasses.dataclass(frozen=True)
class ImageSet:
    """Test images evaluated and reported together: one site's, or a pooled datalist file's."""

    name: str
    label: int  # the site's selector label, or UNKNOWN_SITE
    datalist: Path
    items: list[dict[str, str]]


def load_test_sets(datalist_path: Path, base_dir: Path, labels: Mapping[str, int]) -> list[ImageSet]:
    """One test set per site of `labels` from a folder of `client_<name>.json` datalists, or a single
    set (named after the file) from a datalist JSON file such as the reference's `client_All.json`."""
    if datalist_path.is_file():
        return [ImageSet(datalist_path.stem, UNKNOWN_SITE, datalist_path, _testing(datalist_path, base_dir))]
    if datalist_path.is_dir():
        files = {client: datalist_file(datalist_path, client) for client in labels}
        return [ImageSet(client, label, files[client], _testing(files[client], base_dir))
                for client, label in labels.items()]
    raise DataError(f"datalist_json_path {datalist_path} is neither a datalist JSON file "
                    "nor a folder of client_<name>.json datalists")


def evaluate_site(
    items: list[dict[str, str]],
    label: int,
    models: BestModels,
    setup: RunSetup,
    threshold: float,
    batch_size: int,
    cache_rate: float,
    device: torch.device,
    description: str,
) -> ImageResults:
    if not items:
        return ImageResults.empty()
    config = setup.train_config
    loader = make_loader(items, config.image_size, batch_size, shuffle=False, cache_rate=cache_rate,
                         num_workers=config.num_workers, seed=config.seed)
    return evaluate_loader(loader, label, models.model, threshold, device, description)


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------

def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--models_dir", help="server app folder of the run (holds the best checkpoints and config/)")
    where.add_argument("--workspace", help="simulator workspace (or POC / download folder) of the run; "
                                           "its server app folder is found automatically")
    parser.add_argument("--dataset_base_dir", default=None,
                        help="root of the 2D PNG dataset (default: dataset_base_dir of the run's config_train.json)")
    parser.add_argument("--datalist_json_path", default=None,
                        help="folder of the client_<name>.json datalists, one per site, or one datalist JSON file "
                             "(e.g. client_All.json) evaluated as one pooled set "
                             "(default: datalist_json_path of the run's config)")
    parser.add_argument("--select_threshold", type=float, default=DEFAULT_THRESHOLD,
                        help="use a site's personalized model when the selector's top probability exceeds this "
                             f"(default {DEFAULT_THRESHOLD}; 1.0 = global model only)")
    parser.add_argument("--route_by_validation", type=float, default=None, metavar="MARGIN",
                        help="beyond the paper: use a site's personalized model only where its validation Dice "
                             "(best checkpoint) beats the global model's by more than MARGIN; else the global "
                             "model (default: off, as published)")
    parser.add_argument("--cache_rate", type=float, default=0.0, help="share of test images cached in memory (default 0)")
    parser.add_argument("--batch_size", type=int, default=None,
                        help="inference batch size (default: batch_size of the run's config; results do not depend on it)")
    parser.add_argument("--output_json", default=None, help="also write the results to this JSON file")
    parser.add_argument("--figures_dir", default=None,
                        help="also draw the first test slices of each site with the ground truth and both models' "
                             "contours, as test_slices_<site>.png in this folder")
    args = parser.parse_args(argv)
    if not 0.0 <= args.select_threshold <= 1.0:
        parser.error(f"--select_threshold must be in [0, 1], got {args.select_threshold}")
    if not 0.0 <= args.cache_rate <= 1.0:
        parser.error(f"--cache_rate must be in [0, 1], got {args.cache_rate}")
    if args.batch_size is not None and args.batch_size < 1:
        parser.error(f"--batch_size must be >= 1, got {args.batch_size}")
    return args


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Evaluate the run; prints the table and the final `Test Dice:` line; returns the results."""
    models_dir = find_server_app(args.models_dir or args.workspace)
    setup = load_run_setup(models_dir)
    config = setup.train_config
    base_dir = resolve_path(args.dataset_base_dir or config.dataset_base_dir, "dataset_base_dir")
    datalist_path = resolve_path(args.datalist_json_path or config.datalist_json_path, "datalist_json_path")
    batch_size = args.batch_size or config.batch_size
    device = choose_device()  # float32 whatever the run's `amp`: test Dice comparable across runs
    logger.info("models: %s; sites (label): %s; device %s", models_dir,
                ", ".join(f"{client} ({label})" for client, label in setup.labels.items()), device)
    models = load_best_models(setup, device)
    if args.route_by_validation is not None:
        models = models.routed_by_validation(setup.labels, args.route_by_validation)
        kept = [client for client, label in setup.labels.items() if label in models.model.personalized]
        logger.info("routing by validation (margin %g): personalized models of %s; validation Dice %s",
                    args.route_by_validation, kept or "no site", models.validation)
    image_sets = load_test_sets(datalist_path, base_dir, setup.labels)

    per_set: dict[str, ImageResults] = {}
    for image_set in image_sets:
        if not image_set.items:
            logger.warning("%s has no %s images in %s", image_set.name, TEST_SPLIT, image_set.datalist)
        per_set[image_set.name] = evaluate_site(image_set.items, image_set.label, models, setup, args.select_threshold,
                                               batch_size, args.cache_rate, device, image_set.name)
        if args.figures_dir and image_set.items:
            loader = make_loader(image_set.items, config.image_size, batch_size, shuffle=False)
            figure = draw_first_slices(loader, models.model, args.select_threshold, device, FIGURE_SLICES,
                                       f"{image_set.name}: test slices",
                                       Path(args.figures_dir).expanduser() / f"test_slices_{image_set.name}.png")
            logger.info("wrote %s", figure)
    rows = [summarize(name, results) for name, results in per_set.items()]
    pooled = summarize("pooled", ImageResults.concat(list(per_set.values())))
    if pooled.images == 0:
        raise DataError(f"no {TEST_SPLIT} images in the datalist(s) at {datalist_path}")

    routing = "" if args.route_by_validation is None else f", routed by validation (margin {args.route_by_validation:g})"
    print(f"FedSM super model, select_threshold {args.select_threshold:g}{routing}, models from {models_dir}")
    print(format_table(rows, pooled))
    print(routing_note(pooled, args.select_threshold))
    results = {
        "models_dir": str(models_dir),
        "dataset_base_dir": str(base_dir),
        "datalist_json_path": str(datalist_path),
        "select_threshold": args.select_threshold,
        "route_by_validation": None if args.route_by_validation is None else {
            "margin": args.route_by_validation, "validation_dice": models.validation,
            "personalized_sites": [client for client, label in setup.labels.items()
                                   if label in models.model.personalized]},
        "sites": {row.site: row.as_json() for row in rows},
        "pooled": pooled.as_json(),
        "test_dice": pooled.super_dice,
    }
    if args.output_json:
        write_text_atomic(Path(args.output_json).expanduser(), json.dumps(results, indent=2) + "\n")
        logger.info("wrote %s", args.output_json)
    print(f"Test Dice: {pooled.super_dice:.4f}")
    return results


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # MONAI's optional DICOM decoder plugin announces its absence on every image reader; irrelevant for PNGs.
    logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message="NvImgCodecPydicomReader")
    try:
        return run(args)
    except (FileNotFoundError, CheckpointError, DataError, ValueError) as error:
        raise SystemExit(f"prostate_2d_test_only: error: {error}") from error


if __name__ == "__main__":
    main(sys.argv[1:])
