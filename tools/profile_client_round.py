# Run by: maintainers, to measure the job (docs/performance.md). User commands live in scripts/.
"""Time each part of one FedSM client's round, outside NVFlare, on that client's data and models.

Builds the client's loaders, models and optimizers as the client learner does (same config, same
builders), then times: loading its data (checking the images, filling the dataset cache), iterating
the cached training loader once, one UNet epoch, the selector's full-batch gradient, one Adam step of
the selector, the selector validation and one UNet validation. Prints a markdown table of seconds per
part (the median of `--repeats`; the data is loaded once) and the process's peak RSS.

    python tools/profile_client_round.py --set train.image_size=256 \\
        --set train.dataset_base_dir=/tmp/ref12/dataset_2D --set train.datalist_json_path=/tmp/ref12/datalist_2D

`--set` takes the settings `python -m fedsm.job_config` and tools/benchmark.py take. `--threads`
defaults to what each of three simulator clients on this host gets (`train.torch_threads`, 0 = the
cores shared among three).
"""

import argparse
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from fedsm.config import TrainConfig, read_job_configs
from fedsm.core.label_mapping import label_of
from fedsm.core.model_kinds import GLOBAL, SELECTOR
from fedsm.data.site_data import SiteData, load_site_data
from fedsm.job_config import derive_job, parse_override
from fedsm.ops.telemetry import memory_use
from fedsm.runtime import Compute, compute_for, cpu_threads
from fedsm.training import (build_local_models, selector_adam_step, selector_full_batch_gradient, train_segmentation,
                            validate_segmentation, validate_selector)

REPO = Path(__file__).resolve().parents[1]
SIMULATOR_CLIENTS = 3  # the job's three sites, run side by side by the simulator
LOAD_DATA = "load the site's data: check the images, fill the dataset cache"
logger = logging.getLogger("profile_client_round")


def read_job(job: str | Path, overrides: dict[str, Any]) -> tuple[TrainConfig, dict[str, int]]:
    """The training config and the checked label mapping of `job` with `overrides` applied."""
    with tempfile.TemporaryDirectory(prefix="fedsm_profile_") as staging:
        configs = read_job_configs(derive_job(job, Path(staging) / "job", overrides),
                                   described_as=f"{job} with {overrides}")
    return configs.train, configs.label_mapping


def synchronize(compute: Compute) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously)."""
    if compute.device.type == "cuda":
        torch.cuda.synchronize(compute.device)


def timed(part: str, compute: Compute, work: Callable[[], Any]) -> tuple[Any, float]:
    """`work()`'s result and its wall time in seconds, the device's queued work included."""
    logger.info("%s ...", part)
    synchronize(compute)
    started = time.perf_counter()
    result = work()
    synchronize(compute)
    return result, time.perf_counter() - started


def round_parts(config: TrainConfig, data: SiteData, models: dict, optimizers: dict, label: int,
                compute: Compute) -> dict[str, Callable[[], Any]]:
    """The parts of a client's round after loading its data, by name, in the order they are timed."""
    unet, selector, selector_optimizer = models[GLOBAL], models[SELECTOR], optimizers[SELECTOR]
    batches = f"batches of {config.selector_batch_size}"

    return {
        "iterate the cached training loader once": lambda: sum(1 for _ in data.train_loader),
        f"one UNet epoch, batch size {config.batch_size}": lambda: train_segmentation(
            unet, optimizers[GLOBAL], data.train_loader, 1, compute),
        f"selector full-batch gradient, {batches}": lambda: selector_full_batch_gradient(
            selector, data.selector_loader, label, compute),
        "one Adam step of the selector": lambda: selector_adam_step(selector, selector_optimizer, {}),
        f"selector validation, {batches}": lambda: validate_selector(selector, data.val_loader, label, compute),
        f"one UNet validation, {batches}": lambda: validate_segmentation(unet, data.val_loader, compute),
    }


def profile_round(config: TrainConfig, data: SiteData, label: int, compute: Compute,
                  repeats: int) -> dict[str, list[float]]:
    """Build the client's models as the learner does and time each part of a round on `data`
    `repeats` times; the seconds of each part."""
    models, optimizers = build_local_models(config.as_dict(), compute)
    times: dict[str, list[float]] = {}
    for _ in range(repeats):
        for part, work in round_parts(config, data, models, optimizers, label, compute).items():
            times.setdefault(part, []).append(timed(part, compute, work)[1])
    return times


def header(config: TrainConfig, client: str, label: int, data: SiteData, threads: int, compute: Compute,
           repeats: int) -> str:
    """One line of the settings the table was measured with."""
    return (f"client {client} (label {label}), image size {config.image_size}x{config.image_size}, selector "
            f"{config.selector}, {data.num_training} training / {data.num_validation} validation slices, "
            f"threads {threads}, device {compute}, batch_size {config.batch_size}, selector_batch_size "
            f"{config.selector_batch_size}, median of {repeats} repeat(s)")


def table(times: dict[str, list[float]]) -> str:
    """`| part | seconds |` in markdown, the median seconds of each part."""
    rows = [f"| {part} | {statistics.median(seconds):.4f} |" for part, seconds in times.items()]
    return "\n".join(["| part | seconds |", "|---|---:|", *rows])


def memory_report(compute: Compute) -> str:
    """The process's peak RSS (and, on CUDA, the most torch allocated on the device) in GiB."""
    use, gib = memory_use(compute.device), 1024**3
    report = f"peak RSS of this process: {use['peak'] / gib:.2f} GiB"
    if "gpu_peak" in use:
        report += f", peak GPU memory allocated: {use['gpu_peak'] / gib:.2f} GiB"
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--job", default=str(REPO / "jobs" / "fedsm_prostate"), help="job folder")
    parser.add_argument("--client", help="client to profile (default: the first of client_id_label_mapping)")
    parser.add_argument("--set", dest="overrides", action="append", type=parse_override, default=[],
                        metavar="SECTION.KEY=VALUE", help="job setting, as in `python -m fedsm.job_config`")
    parser.add_argument("--threads", type=int, help="torch threads (default: one of three simulator clients' share)")
    parser.add_argument("--repeats", type=int, default=1, help="times each part after the data loading runs")
    args = parser.parse_args(argv)
    if args.repeats < 1 or (args.threads is not None and args.threads < 1):
        parser.error("--repeats and --threads must be at least 1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    try:
        config, mapping = read_job(args.job, dict(args.overrides))
        client = args.client or next(iter(mapping))
        label = label_of(mapping, client)
    except (OSError, ValueError, KeyError) as error:
        parser.error(str(error))
    threads = args.threads or cpu_threads(config.torch_threads, SIMULATOR_CLIENTS)
    torch.set_num_threads(threads)
    compute = compute_for(config.amp, config.channels_last)
    torch.manual_seed(config.seed)
    try:
        data, load_seconds = timed(LOAD_DATA, compute, lambda: load_site_data(config, client))
    except ValueError as error:  # a missing or bad datalist or image, named by the error
        parser.error(f"client '{client}': {error}")
    times = {LOAD_DATA: [load_seconds], **profile_round(config, data, label, compute, args.repeats)}
    print(header(config, client, label, data, threads, compute, args.repeats))
    print()
    print(table(times))
    print()
    print(memory_report(compute))
    return 0


if __name__ == "__main__":
    sys.exit(main())
