"""Package and derive the FedAvg baseline job (`jobs/fedavg_prostate`).

The FedAvg job is stock NVFlare on the server (ScatterAndGather, InTimeAccumulateWeightedAggregator,
FullModelShareableGenerator, PTFileModelPersistor, IntimeModelSelector, then GlobalModelEval of the
final and best models) with one thin client executor, `fedsm_baselines.fedavg_executor`, that trains
the FedSM UNet with `fedsm.training`. Like the FedSM job it brings its code in `app/custom` (BYOC):
the `fedsm` package and `fedsm_baselines`.

    python -m result_stat.fedavg_job jobs/fedavg_prostate                      # package the code in place
    python -m result_stat.fedavg_job jobs/fedavg_prostate /tmp/fedavg_job \
        --train-config-from /tmp/fedsm_job/app/config/config_train.json --set server.num_rounds=40

`--train-config-from` copies a FedSM job's `config_train.json` (same data, image size, learning rate,
local epochs, batch size, seed; its selector keys are unused), so both jobs are configured from one
file. `--set` works as in `fedsm.job_config` (`train.KEY`, `server.KEY` for the top-level variables
`num_rounds`, `min_clients`, `seed`, `meta.KEY`); the server's `seed` (initial model) follows the
training config's seed unless set explicitly.
"""

import argparse
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from fedsm.job_config import derive_job, package_code, parse_override

BASELINES_PACKAGE = "fedsm_baselines"


def baselines_source() -> Path:
    """Folder of the `fedsm_baselines` package (installed, or beside `fedsm` in this repository's custom/)."""
    try:
        import fedsm_baselines

        return Path(fedsm_baselines.__file__).parent
    except ImportError:
        candidate = Path(__file__).resolve().parents[1] / "custom" / BASELINES_PACKAGE
        if not (candidate / "__init__.py").is_file():
            raise FileNotFoundError(f"cannot find the {BASELINES_PACKAGE} package (looked in {candidate})") from None
        return candidate


def package_fedavg_code(job_dir: str | Path) -> Path:
    """Copy `fedsm` and `fedsm_baselines` into `<job_dir>/app/custom/` (replacing older copies)."""
    package_code(job_dir)
    target = Path(job_dir) / "app" / "custom" / BASELINES_PACKAGE
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(baselines_source(), target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return target.parent


def derive_fedavg_job(source: str | Path, destination: str | Path, overrides: dict[str, Any],
                      train_config_from: str | Path | None = None) -> Path:
    """Copy the FedAvg job `source` to `destination`, optionally replace its `config_train.json` by
    `train_config_from`, apply `{"section.key": value}` overrides and package the code."""
    source, destination = Path(source), Path(destination)
    overrides = dict(overrides)
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp) / "job"
        shutil.copytree(source, staged, ignore=shutil.ignore_patterns("__pycache__", "custom"))
        train_file = staged / "app" / "config" / "config_train.json"
        if train_config_from is not None:
            shutil.copyfile(train_config_from, train_file)
        if "server.seed" not in overrides:
            train = json.loads(train_file.read_text())
            overrides["server.seed"] = overrides.get("train.seed", train.get("seed", 0))
        derive_job(staged, destination, overrides)
    package_fedavg_code(destination)
    return destination


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="FedAvg job folder to start from, e.g. jobs/fedavg_prostate")
    parser.add_argument("destination", nargs="?", help="folder of the derived job (replaced if it exists); "
                                                       "without it, only package the code into the source job")
    parser.add_argument("--train-config-from", default=None,
                        help="config_train.json to use (e.g. the FedSM job's), before --set train.* overrides")
    parser.add_argument("--set", dest="overrides", action="append", type=parse_override, default=[],
                        metavar="SECTION.KEY=VALUE")
    args = parser.parse_args(argv)
    if args.destination is None:
        if args.overrides or args.train_config_from:
            parser.error("--set and --train-config-from need a destination folder; the source job is never changed")
        print(package_fedavg_code(args.source))
    else:
        print(derive_fedavg_job(args.source, args.destination, dict(args.overrides), args.train_config_from))


if __name__ == "__main__":
    main()
