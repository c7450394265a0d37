#!/usr/bin/env python
"""Run FedSM as an NVFlare recipe (`fedsm.recipe.FedSMRecipe`), built from jobs/fedsm_prostate's configs.

    python scripts/fedsm_recipe.py                          # the job as configured, in the simulator (SimEnv)
    python scripts/fedsm_recipe.py --num-rounds 20 --selector light --set train.image_size=64
    python scripts/fedsm_recipe.py --export --export-dir /tmp/fedsm_jobs    # writes /tmp/fedsm_jobs/fedsm_prostate
    python scripts/fedsm_recipe.py --env poc                # a fresh local POC federation (PocEnv)

`--export` and `--export-dir DIR` are NVFlare's own recipe flags: NVFlare takes them off the command line
before this script's options are read, and then exports the job instead of running it.

The simulator writes to `<workspace>/fedsm_prostate` (default /tmp/nvflare/fedsm_prostate, the folder the
README's evaluation commands read). `--env poc` provisions and starts a POC federation of the label
mapping's clients in NVFlare's POC workspace (`--workspace`, else NVFLARE_POC_WORKSPACE or NVFlare's
default), replacing a POC federation already running there, submits the job, waits for it, and stops
the federation, keeping its workspace.
"""

import argparse
import logging
import os
import sys
import warnings

# NVFlare warns that it takes --export/--export-dir off the command line; this script relies on that
warnings.filterwarnings("ignore", message="NVFlare reserves '--export'")

from fedsm.job_config import parse_override  # noqa: E402
from fedsm.recipe import DEFAULT_JOB, FedSMRecipe  # noqa: E402
from nvflare.recipe import PocEnv, SimEnv  # noqa: E402

logger = logging.getLogger("fedsm_recipe")
SIM_WORKSPACE = "/tmp/nvflare"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--job", default=str(DEFAULT_JOB), help="job folder whose configs are the defaults")
    parser.add_argument("--num-rounds", type=int, help="rounds of the run (default: the job's)")
    parser.add_argument("--soft-pull-lambda", type=float, help="SoftPull lambda (default: the job's)")
    parser.add_argument("--selector", help="selector architecture, vgg11 or light (default: the job's)")
    parser.add_argument("--selector-training",
                        help="client_adam, client_adam_on_server or server_adam (default: the job's; README, Configuration)")
    parser.add_argument("--clients", type=lambda text: text.split(","),
                        help="comma-separated client names, labelled 0..K-1 in this order "
                             "(default: the job's client_id_label_mapping)")
    parser.add_argument("--set", dest="overrides", action="append", type=parse_override, default=[],
                        metavar="SECTION.KEY=VALUE", help="any other setting, as in python -m fedsm.job_config")
    parser.add_argument("--env", choices=("sim", "poc"), default="sim", help="where to run (default: sim)")
    parser.add_argument("--workspace", help=f"simulator workspace root (default {SIM_WORKSPACE}) or POC workspace")
    parser.add_argument("--threads", type=int, help="simulator threads (default: one per client)")
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)} (to export, give --export --export-dir DIR)")
    return args


def make_env(args: argparse.Namespace, clients: list[str]):
    """The SimEnv or PocEnv of `args` for `clients`."""
    if args.env == "sim":
        return SimEnv(clients=clients, num_threads=args.threads, workspace_root=args.workspace or SIM_WORKSPACE)
    if args.workspace:
        os.environ["NVFLARE_POC_WORKSPACE"] = args.workspace
    return PocEnv(num_clients=len(clients), clients=clients)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args = parse_args(argv)
    mapping = {client: label for label, client in enumerate(args.clients)} if args.clients else None
    try:
        recipe = FedSMRecipe(job_folder=args.job, num_rounds=args.num_rounds, soft_pull_lambda=args.soft_pull_lambda,
                             selector=args.selector, selector_training=args.selector_training,
                             client_id_label_mapping=mapping, overrides=dict(args.overrides))
        env = make_env(args, recipe.clients)
        logger.info("job %s with %s; clients and labels %s; %s", args.job, recipe.settings or "its own settings",
                    recipe.client_id_label_mapping, type(env).__name__)
        run = recipe.execute(env)  # with --export it writes the job and exits here
    except (ValueError, KeyError, FileNotFoundError, RuntimeError) as error:
        logger.error("%s", error)
        return 1
    result = run.get_result(clean_up=False)
    status = run.get_status()
    logger.info("finished%s; results in %s", f" with status {status}" if status else "", result)
    return 0 if result else 1


if __name__ == "__main__":
    sys.exit(main())
