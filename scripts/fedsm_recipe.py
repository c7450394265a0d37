#!/usr/bin/env python
# Run by: users, to run FedSM (or score a finished run) in the simulator, POC or a provisioned project.
"""Run FedSM as an NVFlare recipe (`fedsm.recipe.FedSMRecipe`) in the simulator, POC or a provisioned project.

    python scripts/fedsm_recipe.py                          # the default job, in the simulator (SimEnv)
    python scripts/fedsm_recipe.py --num-rounds 20 --selector light --set train.image_size=64
    python scripts/fedsm_recipe.py --env poc                # a fresh local POC federation (PocEnv)
    python scripts/fedsm_recipe.py --env prod --startup-kit /path/to/admin@nvidia.com   # ProdEnv
    python scripts/fedsm_recipe.py --write-job /tmp/fedsm_job                # the job folder only
    python scripts/fedsm_recipe.py --evaluate WS/server/simulate_job/app_server --clients A,B,NEW
        # evaluate-only: these sites score that finished run's best models on their own test splits
    python scripts/fedsm_recipe.py --export --export-dir /tmp/fedsm_jobs     # writes /tmp/fedsm_jobs/fedsm_prostate

`--export` and `--export-dir` are NVFlare's own recipe flags: NVFlare takes them off the command line
before this script's options are read, and then exports the job instead of running it.

The simulator writes to `<workspace>/fedsm_prostate` (default /tmp/nvflare/fedsm_prostate, the folder the
README's evaluation commands read). `--env poc` provisions and starts a POC federation of the label
mapping's clients in NVFlare's POC workspace (`--workspace`, else NVFLARE_POC_WORKSPACE or NVFlare's
default), replacing a POC federation already running there, submits the job, waits for it, and stops
the federation, keeping its workspace. `--env prod` submits the job to a running provisioned project
through the admin startup kit `--startup-kit`, waits for it and downloads its result; the project's
client names must be those of the label mapping.
"""

import argparse
import logging
import os
import sys
import warnings

# NVFlare warns that it takes --export/--export-dir off the command line; this script relies on that
warnings.filterwarnings("ignore", message="NVFlare reserves '--export'")

from fedsm.job_config import parse_override  # noqa: E402
from fedsm.recipe import FedSMEvaluationRecipe, FedSMRecipe  # noqa: E402
from nvflare.recipe import PocEnv, ProdEnv, SimEnv  # noqa: E402
from nvflare.recipe.prod_env import DEFAULT_ADMIN_USER  # noqa: E402

logger = logging.getLogger("fedsm_recipe")
SIM_WORKSPACE = "/tmp/nvflare"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-rounds", type=int, help="rounds of the run (default: the recipe's, 100)")
    parser.add_argument("--soft-pull-lambda", type=float, help="SoftPull lambda (default: the recipe's, 0.7)")
    parser.add_argument("--min-clients", type=int, help="clients NVFlare needs to start the job (default 2)")
    parser.add_argument("--selector", help="selector architecture, vgg11 or light (sets train.selector)")
    parser.add_argument("--selector-training", help="client_adam, client_adam_on_server or server_adam "
                                                    "(sets train.selector_training; README, Configuration)")
    parser.add_argument("--clients", type=lambda text: text.split(","),
                        help="comma-separated client names, labelled 0..K-1 in this order "
                             "(default: the three prostate sites)")
    parser.add_argument("--set", dest="overrides", action="append", type=parse_override, default=[],
                        metavar="SECTION.KEY=VALUE",
                        help="any other setting, as in python -m fedsm.job_config (train.KEY, workflow.KEY, ...)")
    parser.add_argument("--env", choices=("sim", "poc", "prod"), default="sim", help="where to run (default: sim)")
    parser.add_argument("--workspace", help=f"simulator workspace root (default {SIM_WORKSPACE}) or POC workspace")
    parser.add_argument("--threads", type=int, help="simulator threads (default: one per client)")
    parser.add_argument("--startup-kit", help="--env prod: the admin's startup kit folder of the provisioned project")
    parser.add_argument("--username", default=DEFAULT_ADMIN_USER,
                        help=f"--env prod: the admin of that startup kit (default {DEFAULT_ADMIN_USER})")
    parser.add_argument("--code", choices=("job", "installed"), default="job",
                        help="job: the job carries the fedsm code (BYOC, default); installed: the sites have it "
                             "installed (docs/deployment.md, production)")
    parser.add_argument("--write-job", metavar="FOLDER", help="write the job folder FOLDER (replaced) and exit")
    parser.add_argument("--evaluate", metavar="MODELS_DIR",
                        help="instead of training: the evaluate-only job of the finished run whose server app folder "
                             "is MODELS_DIR (its best checkpoints and configs); --clients are the sites that score "
                             "it (default: the run's), a site the run did not have is an unseen site")
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)} (to export, give --export --export-dir DIR)")
    if args.env == "prod" and not args.startup_kit and not args.write_job:
        parser.error("--env prod needs --startup-kit, the admin's startup kit folder of the provisioned project")
    return args


def settings_of(args: argparse.Namespace) -> dict:
    """The recipe settings (`section.key` -> value) of the command line; a flag wins over a `--set` of it."""
    settings = dict(args.overrides)
    named = {"server.num_rounds": args.num_rounds, "server.soft_pull_lambda": args.soft_pull_lambda,
             "meta.min_clients": args.min_clients, "train.selector": args.selector,
             "train.selector_training": args.selector_training,
             "workflow.client_id_label_mapping": {client: label for label, client in enumerate(args.clients)}
             if args.clients else None}
    settings.update({key: value for key, value in named.items() if value is not None})
    return settings


def make_env(args: argparse.Namespace, clients: list[str]):
    """The SimEnv, PocEnv or ProdEnv of `args` for `clients`."""
    if args.env == "sim":
        return SimEnv(clients=clients, num_threads=args.threads, workspace_root=args.workspace or SIM_WORKSPACE)
    if args.env == "prod":
        return ProdEnv(startup_kit_location=args.startup_kit, username=args.username)
    if args.workspace:
        os.environ["NVFLARE_POC_WORKSPACE"] = args.workspace
    return PocEnv(num_clients=len(clients), clients=clients)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args = parse_args(argv)
    try:
        if args.evaluate:
            recipe = FedSMEvaluationRecipe.of_run(args.evaluate, clients=args.clients, bring_code=args.code == "job")
        else:
            recipe = FedSMRecipe.from_settings(settings_of(args), bring_code=args.code == "job")
        if args.write_job:
            logger.info("job written to %s", recipe.write_job(args.write_job))
            return 0
        env = make_env(args, recipe.clients)
        logger.info("FedSM, %s; clients %s, labels %s; %s",
                    "evaluate-only" if args.evaluate else f"{recipe.num_rounds} rounds", recipe.clients,
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
