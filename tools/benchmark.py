# Run by: maintainers, to measure the job (docs/performance.md). User commands live in scripts/.
"""Benchmark N rounds of a FedSM job config in the NVFlare simulator.

Prints, per round, the wall time split into clients busy (first validation start to last training
end; the slowest client's train and validate times beside it) / communicate / aggregate+persist, the
MB per client moved down and up (as they travel, after any filter), and each process's RSS at the
round's end and its peak so far (server and every client), on CUDA each client's peak GPU memory
of the round; then the parts of each round (`fedsm.flare.round_costs`: building the tasks, moving
them, decoding, encoding, the server's work on the replies, the next model set, the NaN check, the
state write) and the peak total RSS of the whole simulator process tree, sampled every 0.2 s.

`--floor` measures what is left of a round without compute: the same sites and settings, each
site's datalist cut to 2 training, 2 validation and 2 test slices (written into the work folder),
and the federated test evaluation after the last round off unless `--set` says otherwise.

    python tools/benchmark.py --rounds 3 --set train.image_size=256 --set train.selector=vgg11
    python tools/benchmark.py --rounds 3 --quantize float16     # NVFlare's ModelQuantizer both ways
    python tools/benchmark.py --rounds 5 --floor --set train.image_size=96 \
        --set train.dataset_base_dir=DATA/dataset_2D --set train.datalist_json_path=DATA/datalist_2D
"""

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from fedsm.config import resolve_path
from fedsm.data.datalist import SPLITS, datalist_file
from fedsm.flare.round_costs import PARTS, RECORD_FILE
from fedsm.job_config import CONFIG_FILES, add_quantization, derive_job, parse_override
from fedsm.ops.heap import huge_page_heap_env

REPO = Path(__file__).resolve().parents[1]
FLOOR_SLICES = 2  # per split and site in --floor
DATALIST, FEDERATED_EVALUATION = "train.datalist_json_path", "workflow.federated_evaluation"
PART_LABELS = {"tasks": "tasks", "pulled": "pulled", "down": "down", "client_decode": "cl.dec", "client_encode": "cl.enc",
               "up": "up", "server_decode": "sv.dec", "accept": "accept", "next_set": "next set",
               "nan_check": "NaN chk", "server_trim": "sv.trim", "write_wait": "wr.wait", "state_write": "st.write"}
PART_LEGEND = """\
  tasks: server, ROUND_STARTED to the last task handed to NVFlare (the round's sums ready, each task built)
  pulled: ROUND_STARTED to the last client's task passing the server's task filters (clients poll for tasks;
  in round 0 also their start-up)
  down: slowest client, from there to its learner: NVFlare serializes, moves and deserializes the task
  cl.dec / cl.enc: slowest client, decoding its task / building its reply
  up: slowest client, reply built to the server holding it: NVFlare serializes, moves, deserializes it
  sv.dec / accept: server, decoding the replies / norms, bounds, Adam replay, adding (sums over clients)
  next set: building the next model set; NaN chk: checking it for NaN/Inf and missing arrays
  sv.trim: server, handing the round's freed heap back (gc, malloc_trim) before the next tasks
  wr.wait: the round waiting for the checkpoint writes before it; st.write: how long those ran in the
  background (the previous round's state and this round's best models)"""


def round_costs(records_file: Path) -> list[dict]:
    """The server's round records (`fedsm.flare.round_costs`, one JSON object a line); `memory` maps
    each process (server, clients) to its (RSS now, peak) in GiB, `gpu` each client to its round's
    peak GPU memory in GiB (empty off CUDA). Empty when the run wrote no records."""
    if not records_file.is_file():
        return []
    costs = [json.loads(line) for line in records_file.read_text().splitlines() if line.strip()]
    for cost in costs:
        cost["memory"] = {name: tuple(pair) for name, pair in cost["memory"].items()}
    return costs


def records_file(workspace: Path) -> Path:
    """Where the simulator's server app folder keeps the round records."""
    return workspace / "server" / "simulate_job" / "app_server" / RECORD_FILE


def tree_rss(process: psutil.Process) -> dict[int, int]:
    """Resident memory (bytes) of a process and each of its descendants, by pid."""
    sizes = {}
    for member in [process, *process.children(recursive=True)]:
        try:
            sizes[member.pid] = member.memory_info().rss
        except psutil.Error:
            pass
    return sizes


def nvflare_command(job: Path, workspace: Path, clients: list[str]) -> list[str]:
    """The `nvflare simulator` command running `job` with `clients`, one thread each (the `nvflare` beside
    this Python first)."""
    beside_python = Path(sys.executable).with_name("nvflare")
    nvflare = str(beside_python) if beside_python.exists() else shutil.which("nvflare")
    return [nvflare, "simulator", str(job), "-w", str(workspace), "-c", ",".join(clients), "-t", str(len(clients))]


def run_and_sample(command: list[str], log_file: Path, period: float = 0.2) -> tuple[int, int, int]:
    """Run `command` (output to `log_file`); returns (exit code, peak total RSS of its process tree,
    peak RSS of its largest single process)."""
    with open(log_file, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=huge_page_heap_env())
        handle, peak_total, peak_single = psutil.Process(process.pid), 0, 0
        while process.poll() is None:
            try:
                sizes = tree_rss(handle)
            except psutil.NoSuchProcess:
                break
            peak_total = max(peak_total, sum(sizes.values()))
            peak_single = max(peak_single, max(sizes.values(), default=0))
            time.sleep(period)
    return process.returncode, peak_total, peak_single


def floor_datalist(datalist: dict, slices: int = FLOOR_SLICES) -> dict:
    """A site's datalist with each split (`training`, `validation`, `testing`) cut to its first
    `slices` entries; other keys as they are."""
    return {key: value[:slices] if key in SPLITS else value for key, value in datalist.items()}


def write_floor_datalists(source: Path, destination: Path, clients: list[str]) -> Path:
    """Each client's datalist of the folder `source`, cut by `floor_datalist`, into the folder
    `destination` (image paths stay relative to the same dataset folder)."""
    destination.mkdir(parents=True, exist_ok=True)
    for client in clients:
        datalist = json.loads(datalist_file(source, client).read_text())
        datalist_file(destination, client).write_text(json.dumps(floor_datalist(datalist), indent=2) + "\n")
    return destination


def floor_overrides(overrides: dict, job: Path, workdir: Path, clients: list[str]) -> dict:
    """`overrides` for a floor run: the datalists (of `overrides`, else of the job) cut into
    `workdir/floor_datalists`, and the federated test evaluation off unless `overrides` set it."""
    source = overrides.get(DATALIST) or json.loads((job / CONFIG_FILES["train"]).read_text())["datalist_json_path"]
    folder = write_floor_datalists(resolve_path(source, DATALIST), workdir / "floor_datalists", clients)
    return {FEDERATED_EVALUATION: False, **overrides, DATALIST: str(folder)}


def format_parts(costs: list[dict]) -> list[str]:
    """The table of each round's parts (`fedsm.flare.round_costs`), with what each column covers."""
    header = f"{'round':>5} " + " ".join(f"{PART_LABELS[name]:>8}" for name in PARTS)
    lines = ["parts of each round, s:", header, "-" * len(header)]
    lines.extend(f"{int(c['round']):>5} " + " ".join(f"{c['parts'][name]:>8.2f}" for name in PARTS) for c in costs)
    return [*lines, PART_LEGEND]


def format_report(costs: list[dict], peak_rss: int, peak_single: int) -> str:
    gib = 1024**3
    header = f"{'round':>5} {'wall s':>8} {'busy s':>8} {'train s':>8} {'valid. s':>8} {'comm. s':>8} " \
             f"{'agg+pers s':>10} {'down MB':>9} {'up MB':>9} {'overhead':>8}"
    lines = [header, "-" * len(header)]
    for c in costs:
        overhead = (c["communicate"] + c["aggregate"]) / c["wall"] if c["wall"] else 0.0
        lines.append(f"{int(c['round']):>5} {c['wall']:>8.2f} {c['busy']:>8.2f} {c['train']:>8.2f} {c['validate']:>8.2f} "
                     f"{c['communicate']:>8.2f} {c['aggregate']:>10.2f} {c['down']:>9.1f} {c['up']:>9.1f} "
                     f"{overhead:>8.1%}")
    with_parts = [c for c in costs if "parts" in c]  # records written before the parts were measured have none
    if with_parts:
        lines.extend(format_parts(with_parts))
    lines.append("memory per process, GiB at the round's end / peak so far:")
    for c in costs:
        lines.append(f"{int(c['round']):>5} " + ", ".join(f"{name} {rss:.2f}/{peak:.2f}"
                                                         for name, (rss, peak) in c["memory"].items()))
    if any(c["gpu"] for c in costs):
        lines.append("peak GPU memory per client in the round, GiB:")
        lines.extend(f"{int(c['round']):>5} " + ", ".join(f"{name} {peak:.2f}" for name, peak in c["gpu"].items())
                     for c in costs)
    lines.append(f"peak total RSS of the process tree: {peak_rss / gib:.2f} GiB "
                 f"(largest single process: {peak_single / gib:.2f} GiB)")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--job", default=str(REPO / "jobs" / "fedsm_prostate"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", default="client_I2CVB,client_MSD,client_NCI_ISBI_3T")
    parser.add_argument("--workdir", default=None, help="folder for the derived job, workspace and log")
    parser.add_argument("--quantize", choices=["float16", "blockwise8", "adaquant"],
                        help="add NVFlare's ModelQuantizer/ModelDequantizer both ways (blockwise8 needs CUDA)")
    parser.add_argument("--set", dest="overrides", action="append", type=parse_override, default=[],
                        metavar="SECTION.KEY=VALUE", help="job setting, as in `python -m fedsm.job_config`")
    parser.add_argument("--floor", action="store_true",
                        help=f"near-zero compute: each site's datalists cut to {FLOOR_SLICES} slices per split, "
                             f"{FEDERATED_EVALUATION}=false unless set")
    args = parser.parse_args(argv)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="fedsm_bench_"))
    clients = args.clients.split(",")
    overrides = dict(args.overrides)
    if args.floor:
        overrides = floor_overrides(overrides, Path(args.job), workdir, clients)
        print(f"floor: {FLOOR_SLICES} training, validation and test slices per site ({overrides[DATALIST]}); "
              f"{FEDERATED_EVALUATION}={json.dumps(overrides[FEDERATED_EVALUATION])}", flush=True)
    job = derive_job(args.job, workdir / "job", {**overrides, "server.num_rounds": args.rounds})
    if args.quantize:
        add_quantization(job, args.quantize)
    command = nvflare_command(job, workdir / "workspace", clients)
    print(f"running {args.rounds} rounds: {' '.join(command)}", flush=True)
    code, peak, peak_single = run_and_sample(command, workdir / "simulator.log")
    costs = round_costs(records_file(workdir / "workspace"))
    print(format_report(costs, peak, peak_single))
    print(f"log: {workdir / 'simulator.log'}")
    if code != 0 or len(costs) != args.rounds:
        print(f"simulator exit code {code}, {len(costs)} of {args.rounds} rounds reported", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
