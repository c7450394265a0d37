"""Centralized and local-only baselines of the FedSM study: plain PyTorch, no NVFlare.

    python -m result_stat.baselines centralized --job JOB --output OUT/centralized
    python -m result_stat.baselines local       --job JOB --output OUT/local

Both train the FedSM UNet (`fedsm.models.networks.build_unet`, initialized from the config's seed,
like FedSM's and FedAvg's initial global model) with FedSM's own loops (`fedsm.training`), data
loading and preprocessing (`fedsm.data`), and the training config and budget of a FedSM job folder
`JOB` (e.g. `jobs/fedsm_prostate` or a derived job): `num_rounds` x `local_epochs` epochs, Adam with
`learning_rate`, `batch_size`, `image_size`, reshuffled per round with seed + round as the FedSM
clients do, and on CUDA its `amp` and `channels_last` (`fedsm.runtime.compute_for`), so that a
baseline computes in the precision FedSM does.

- centralized: one model on the pooled training data of all sites (`client_All.json`); validated on
  the pooled validation split after every round's epochs;
- local: one model per site of the job (`client_id_label_mapping`) on that site's own training
  split, validated on its own validation split.

The model is validated before training (round 0) and after each round; the best one by validation
Dice (first one on ties) is kept as `best_model.pt` (`{"weights", "metric", "round"}`, the format of
FedSM's best checkpoints), the last one as `last_model.pt`, and `results.json` holds the config,
seed, budget, the device with the `amp` and `channels_last` in effect, and the validation
curve. Local models go to `OUT/<client>/`.
"""

import argparse
import dataclasses
import json
import logging
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from fedsm.config import TrainConfig
from fedsm.core.best_models import improves
from fedsm.data.site_data import SiteData, load_site_data
from fedsm.io.atomic import write_text_atomic
from fedsm.io.checkpoint import save_checkpoint
from fedsm.models.networks import build_unet
from fedsm.models.weights import get_weights
from fedsm.runtime import Compute, compute_for
from fedsm.training import train_segmentation, validate_segmentation
from result_stat.prostate_2d_test_only import read_label_mapping

POOLED_DATALIST = "client_All"
BEST_NAME, LAST_NAME, RESULTS_NAME = "best_model.pt", "last_model.pt", "results.json"
JOB_TRAIN_CONFIG = Path("app") / "config" / "config_train.json"
JOB_SERVER_CONFIG = Path("app") / "config" / "config_fed_server.json"

logger = logging.getLogger("baselines")


@dataclasses.dataclass(frozen=True)
class JobSetup:
    """What a baseline takes from a FedSM job folder: training config, rounds and sites."""

    job_dir: Path
    train_config: TrainConfig
    num_rounds: int
    sites: list[str]  # client names in selector-label order


def num_rounds_of(server_config: dict, source: str) -> int:
    """`num_rounds` of a server config: the top-level variable, or the first workflow's argument."""
    value = server_config.get("num_rounds")
    if value is None:
        for workflow in server_config.get("workflows", []):
            if "num_rounds" in workflow.get("args", {}):
                value = workflow["args"]["num_rounds"]
                break
    if isinstance(value, str) and value.startswith("{"):
        value = server_config.get(value.strip("{}"))
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{source}: no positive integer num_rounds (got {value!r})")
    return value


def read_job(job_dir: str | Path) -> JobSetup:
    """Training config, number of rounds and sites of the FedSM job folder `job_dir`."""
    job_dir = Path(job_dir)
    train_file, server_file = job_dir / JOB_TRAIN_CONFIG, job_dir / JOB_SERVER_CONFIG
    for file in (train_file, server_file):
        if not file.is_file():
            raise FileNotFoundError(f"{job_dir} is not a FedSM job folder: {file} is missing")
    server_config = json.loads(server_file.read_text())
    labels = read_label_mapping(server_file)
    return JobSetup(job_dir, TrainConfig.from_file(train_file), num_rounds_of(server_config, str(server_file)),
                    [client for client, _ in sorted(labels.items(), key=lambda item: item[1])])


def job_compute(job: JobSetup, device: torch.device | None = None) -> Compute:
    """What the baselines compute with: the job's `amp` and `channels_last` as its FedSM clients use
    them on `device` (default: the one `fedsm.runtime.choose_device` picks); warns where they are ignored."""
    return compute_for(job.train_config.amp, job.train_config.channels_last, device)


def train_baseline(name: str, data: SiteData, config: TrainConfig, num_rounds: int,
                   output: Path, compute: Compute, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train one UNet on `data`'s training split for `num_rounds` x `local_epochs` epochs, keep the best
    by Dice on its validation split; writes best/last checkpoints and results.json into `output`."""
    torch.manual_seed(config.seed)
    model = compute.place(build_unet())
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    train_loader, val_loader = data.train_loader, data.val_loader
    output.mkdir(parents=True, exist_ok=True)
    best: dict[str, float] = {}
    history = []
    started = time.monotonic()

    def validate(round_number: int, train_loss: float | None) -> None:
        dice = validate_segmentation(model, val_loader, compute)
        history.append({"round": round_number, "train_loss": train_loss, "val_dice": dice})
        if improves(best, "val_dice", dice):
            save_checkpoint(output / BEST_NAME, {"weights": get_weights(model), "metric": float(dice),
                                                 "round": round_number})
            best["round"] = round_number
        logger.info("%s round %d: val Dice %.4f%s", name, round_number, dice,
                    "" if train_loss is None else f", train loss {train_loss:.4f}")

    validate(0, None)
    for round_number in range(num_rounds):
        # per-round seeding as in the FedSM and FedAvg clients
        torch.manual_seed(config.seed + round_number)
        train_loader.generator.manual_seed(config.seed + round_number)
        loss, _ = train_segmentation(model, optimizer, train_loader, config.local_epochs, compute)
        validate(round_number + 1, loss)
    save_checkpoint(output / LAST_NAME, {"weights": get_weights(model), "metric": history[-1]["val_dice"],
                                         "round": num_rounds})
    results = {
        "baseline": name,
        "config": config.as_dict(),
        "seed": config.seed,
        "num_rounds": num_rounds,
        "local_epochs": config.local_epochs,
        "epochs": num_rounds * config.local_epochs,
        "train_images": data.num_training,
        "val_images": data.num_validation,
        "best_round": int(best.get("round", 0)),
        "best_val_dice": best.get("val_dice"),
        "seconds": round(time.monotonic() - started, 1),
        "device": str(compute.device),
        "amp": compute.amp,
        "channels_last": compute.channels_last,
        "history": history,
        **(extra or {}),
    }
    write_text_atomic(output / RESULTS_NAME, json.dumps(results, indent=2) + "\n")
    return results


def run_centralized(job: JobSetup, output: Path, compute: Compute) -> dict[str, Any]:
    data = load_site_data(job.train_config, POOLED_DATALIST)
    return train_baseline("centralized", data, job.train_config, job.num_rounds, output, compute,
                          {"datalist": POOLED_DATALIST, "job": str(job.job_dir)})


def run_local(job: JobSetup, output: Path, compute: Compute, sites: Sequence[str] | None = None) -> dict[str, Any]:
    results = {}
    for client in sites or job.sites:
        data = load_site_data(job.train_config, client)
        results[client] = train_baseline(f"local {client}", data, job.train_config, job.num_rounds,
                                         output / client, compute, {"datalist": client, "job": str(job.job_dir)})
    return results


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("baseline", choices=("centralized", "local"))
    parser.add_argument("--job", required=True, help="FedSM job folder whose config and budget to use")
    parser.add_argument("--output", required=True, help="output folder (local: one subfolder per site)")
    parser.add_argument("--sites", nargs="+", default=None, help="local: only these clients (default: all of the job)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message="NvImgCodecPydicomReader")
    try:
        job = read_job(args.job)
    except (OSError, ValueError) as error:
        raise SystemExit(f"baselines: error: {error}") from error
    if job.train_config.torch_threads > 0:
        torch.set_num_threads(job.train_config.torch_threads)
    compute = job_compute(job)
    output = Path(args.output).expanduser()
    logger.info("%s baseline: %d rounds x %d local epochs, image size %d, seed %d, device %s", args.baseline,
                job.num_rounds, job.train_config.local_epochs, job.train_config.image_size, job.train_config.seed,
                compute)
    if args.baseline == "centralized":
        result = run_centralized(job, output, compute)
        logger.info("centralized: best val Dice %.4f at round %d", result["best_val_dice"], result["best_round"])
    else:
        unknown = sorted(set(args.sites or []) - set(job.sites))
        if unknown:
            raise SystemExit(f"baselines: error: {unknown} are not sites of {args.job} ({job.sites})")
        result = run_local(job, output, compute, args.sites)
        for client, item in result.items():
            logger.info("local %s: best val Dice %.4f at round %d", client, item["best_val_dice"], item["best_round"])
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
