# Run by: maintainers, to measure NVFlare's own share of the floor (docs/performance.md).
"""NVFlare's stock FedAvg moving as many bytes as a FedSM round, with no compute: the floor that
belongs to NVFlare (serializing, moving and deserializing the messages, its InTime aggregation and
the persistor's save), to set beside `tools/benchmark.py --floor`.

The job is NVFlare's `FedAvgRecipe` (PyTorch), unchanged: its model is `Payload` of as many float32
parameters as a FedSM task carries per client (the two UNets and the selector of the job's
`config_train.json`), in 64 MiB pieces as FedSM sends them; each client returns the model it
received (`echo_client.py`). The server sends it as tensors, as FedSM does. Prints each round's wall
time, from the server's `Round N started.` line to the next one's (so the last round is not timed),
and the peak RSS of the simulator's process tree, sampled as `tools/benchmark.py` does (huge-page
heap included).

    python tools/stock_floor.py --rounds 5
"""

import argparse
import json
import re
import sys
import tempfile
from datetime import datetime
from pathlib import Path

from nvflare.app_opt.pt.recipes.fedavg import FedAvgRecipe
from nvflare.client.config import ExchangeFormat

from benchmark import REPO, nvflare_command, run_and_sample
from fedsm.models.networks import build_models

APP = Path(__file__).resolve().parent / "stock_floor_app"
# FedAvg logs the round's start as a banner: a timestamped line, a rule, then "Round N started."
ROUND_START = re.compile(r"^(?P<time>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) [^\n]*\n-+\n\s*Round (?P<round>\d+) started\.",
                         re.MULTILINE)


def fedsm_parameters(job: Path) -> int:
    """Parameters per client one way in the FedSM job `job`: the global and personalized UNets and the selector."""
    train_config = json.loads((job / "app" / "config" / "config_train.json").read_text())
    return sum(p.numel() for model in build_models(train_config).values() for p in model.parameters())


def stock_job(parameters: int, rounds: int, clients: int, destination: Path) -> Path:
    """NVFlare's stock FedAvg job moving `Payload(parameters)`, exported into `destination`."""
    recipe = FedAvgRecipe(name="stock_floor", model={"class_path": "stock_floor_app.payload.Payload", "args": {"parameters": parameters}},
                          min_clients=clients, num_rounds=rounds, train_script=str(APP / "echo_client.py"),
                          server_expected_format=ExchangeFormat.PYTORCH)
    recipe.add_server_file(str(APP / "payload.py"))
    recipe.add_client_file(str(APP / "payload.py"))
    recipe.export(str(destination))
    return destination / "stock_floor"


def round_walls(log_text: str) -> dict[int, float]:
    """Seconds of each round from its `Round N started.` line to the next one's (none for the last)."""
    starts = [(int(m["round"]), datetime.strptime(m["time"], "%Y-%m-%d %H:%M:%S,%f"))
              for m in ROUND_START.finditer(log_text)]
    return {number: (end - start).total_seconds() for (number, start), (_, end) in zip(starts, starts[1:])}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--job", default=str(REPO / "jobs" / "fedsm_prostate"), help="FedSM job whose size to move")
    parser.add_argument("--rounds", type=int, default=5, help="rounds to run (all but the last are timed)")
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args(argv)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="stock_floor_"))
    parameters = fedsm_parameters(Path(args.job))
    job = stock_job(parameters, args.rounds, args.clients, workdir / "jobs")
    command = nvflare_command(job, workdir / "workspace", [f"site-{i + 1}" for i in range(args.clients)])
    print(f"stock FedAvg, {parameters / 1e6:.1f}M float32 parameters ({parameters * 4 / 2**20:.1f} MiB) "
          f"each way per client, {args.clients} clients, {args.rounds} rounds: {' '.join(command)}", flush=True)
    code, peak, peak_single = run_and_sample(command, workdir / "simulator.log")
    walls = round_walls((workdir / "simulator.log").read_text(errors="replace"))
    print("round   wall s")
    print("\n".join(f"{number:>5} {wall:>8.2f}" for number, wall in walls.items()))
    print(f"peak total RSS of the process tree: {peak / 2**30:.2f} GiB (largest single process: "
          f"{peak_single / 2**30:.2f} GiB)")
    print(f"log: {workdir / 'simulator.log'}")
    if code != 0 or len(walls) != args.rounds - 1:
        print(f"simulator exit code {code}, {len(walls)} of {args.rounds - 1} rounds timed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
