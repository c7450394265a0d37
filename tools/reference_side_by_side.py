# Run by: maintainers, to compare this job with NVIDIA's public example (docs/generalization_gap.md).
"""Side by side: NVFlare's `research/fed-sm` and this job on the same data, global model Dice per round.

    git clone https://github.com/NVIDIA/NVFlare ~/NVFlare
    python -m data_preparation.synthetic --output /tmp/sbs_data --cases-per-site 12 --seed 0
    python tools/reference_side_by_side.py --reference ~/NVFlare --data /tmp/sbs_data \
        --rounds 20 --image-size 96 --runs 2 --workdir /tmp/side_by_side

The reference job (`research/fed-sm/jobs/fedsm_prostate`) is copied into the work folder and changed
there, never in the checkout, only where it must be to run on the given data with NVFlare 2.9 and
NumPy 2 (`reference_patches`): its datalist paths, `num_rounds`, the resize to `--image-size`
instead of 256x256, and its aggregator's division of the weighted sum by a NumPy float64, which
under NumPy 2 turns every averaged array into float64 (twice the memory). Each patch must find the
text it replaces exactly once, else the run stops naming the file and the patch. This job (`--job`)
is derived with the same data, rounds, image size and client labels, seeds 0..N-1; the reference
has no seed setting. Memory, 3 clients with the VGG11 selector at 96x96 on CPU (2026-12-06): the
reference's process tree peaked at 22.3 GiB, this job's at 11.4 GiB; give the reference a box of its
own with 24 GiB or more.

Both sides run in the NVFlare simulator, one run at a time, reference and this job taking turns. The
global model validation Dice of every site and round comes from each run's TensorBoard files (both
log `val_metric_global_model`). Written into the work folder after every run, so a comparison stopped
early keeps what it finished (`--resume` then runs only the rest; a run that ended, finished or failed,
is kept: delete its `run.json` to run it again). A run that fails, as the reference may when it runs
out of memory, is reported with the rounds it logged and the others go on; the exit code is then 1.
`side_by_side.md` (revision, patches, timings, the per-round table: mean and min-max over the runs of
a side), `side_by_side.csv` and
`learning_speed_vs_reference.png`. Round times are read from each simulator log ("Round N ...
started" to "Round N finished", the server's lines on both sides).
"""

import argparse
import csv
import dataclasses
import functools
import io
import json
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path

import numpy as np
import psutil

from benchmark import run_and_sample
from fedsm.io.atomic import write_text_atomic
from fedsm.job_config import derive_job
from result_stat.plot_tensorboard_events import plot_runs, read_workspace, save_png

REPO = Path(__file__).resolve().parents[1]
JOB_IN_CHECKOUT = Path("research") / "fed-sm" / "jobs" / "fedsm_prostate"
JOB_IN_FEDSM_FOLDER = Path("jobs") / "fedsm_prostate"
REFERENCE_SERVER_CONFIG = Path("app") / "config" / "config_fed_server.json"
DICE_TAG = "val_metric_global_model"
REFERENCE, THIS_JOB = "reference", "this job"
DATASET_FOLDER, DATALIST_FOLDER = "dataset_2D", "datalist_2D"
REPORT, TABLE_CSV, FIGURE = "side_by_side.md", "side_by_side.csv", "learning_speed_vs_reference.png"
RUN_RECORD = "run.json"  # beside a run's log: its command, wall time, peak memory and round times
PROGRESS_PERIOD_S = 5.0
GIB = 1024**3

LOG_TIME = re.compile(r"^(\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2},\d{3})")
ROUND_STARTED = re.compile(r"\bRound (\d+)\b.*\bstarted\b")
ROUND_FINISHED = re.compile(r"\bRound (\d+) finished\b")


class PatchError(RuntimeError):
    """The reference's text that a patch replaces is not there exactly once (upstream changed)."""


@dataclasses.dataclass(frozen=True)
class Patch:
    """Replace `old` by `new` in the file `path` (relative to the reference job folder)."""

    path: Path
    what: str
    why: str
    old: str
    new: str


def reference_patches(data: Path, rounds: int, image_size: int) -> list[Patch]:
    """The minimal changes that run the reference job on `data` for `rounds` rounds at `image_size`."""
    train, server = Path("app/config/config_train.json"), REFERENCE_SERVER_CONFIG
    learner = Path("app/custom/learners/supervised_monai_prostate_learner.py")
    aggregator = Path("app/custom/aggregators/accumulate_model_aggregator_fedsm.py")
    return [
        Patch(train, "dataset root", "its placeholder DATASET_ROOT names no folder",
              '"dataset_base_dir": "DATASET_ROOT/dataset_2D"',
              f'"dataset_base_dir": {json.dumps(str(data / DATASET_FOLDER))}'),
        Patch(train, "datalist folder", "its placeholder DATASET_ROOT names no folder",
              '"datalist_json_path": "DATASET_ROOT/datalist_2D"',
              f'"datalist_json_path": {json.dumps(str(data / DATALIST_FOLDER))}'),
        Patch(server, "num_rounds", "the run's length (100 in the reference)",
              '"num_rounds": 100,', f'"num_rounds": {rounds},'),
        Patch(learner, "resize", "slices resized to the size both sides use (256x256 in the reference)",
              "spatial_size=(256, 256),", f"spatial_size=({image_size}, {image_size}),"),
        Patch(aggregator, "float32 average",
              "under NumPy 2 the weighted sum divided by a NumPy float64 is float64, twice the memory of every "
              "averaged array; divided by a Python float it stays float32",
              "new_val = np.sum(np_vars, axis=0) / np.sum(n_local_iters)",
              "new_val = np.sum(np_vars, axis=0) / float(np.sum(n_local_iters))"),
    ]


def apply_patch(job_dir: Path, patch: Patch) -> None:
    """Apply `patch` to its file under `job_dir`; `PatchError` unless its text occurs there exactly once."""
    file = job_dir / patch.path
    if not file.is_file():
        raise PatchError(f"{file}: not found; patch '{patch.what}' cannot be applied (upstream changed?)")
    text = file.read_text()
    found = text.count(patch.old)
    if found != 1:
        raise PatchError(f"{file}: patch '{patch.what}' expects {patch.old!r} exactly once, found it {found} times "
                         "(upstream changed?)")
    write_text_atomic(file, text.replace(patch.old, patch.new))


def reference_job_folder(reference: Path) -> Path:
    """The FedSM job folder of `reference`: a checkout of NVIDIA/NVFlare or its `research/fed-sm` folder."""
    candidates = [reference / JOB_IN_CHECKOUT, reference / JOB_IN_FEDSM_FOLDER]
    for candidate in candidates:
        if (candidate / "meta.json").is_file():
            return candidate
    raise FileNotFoundError(f"--reference {reference}: no job folder with a meta.json at "
                            f"{' or '.join(str(candidate) for candidate in candidates)}")


def copy_patched_reference(reference: Path, destination: Path, patches: Sequence[Patch]) -> Path:
    """Copy the reference's job folder to `destination` (replaced if it exists) and apply `patches` there."""
    if destination.exists():
        shutil.rmtree(destination)
    shutil.copytree(reference_job_folder(reference), destination, ignore=shutil.ignore_patterns("__pycache__"))
    for patch in patches:
        apply_patch(destination, patch)
    return destination


def reference_revision(reference: Path) -> str:
    """The commit of the checkout holding `reference`, noting uncommitted changes to its job folder;
    'unknown' when it is not a git checkout (or git is missing)."""
    job = reference_job_folder(reference)
    try:
        commit = subprocess.run(["git", "-C", str(job), "rev-parse", "HEAD"], capture_output=True, text=True,
                                check=True).stdout.strip()
        changes = subprocess.run(["git", "-C", str(job), "status", "--porcelain", "--", "."], capture_output=True,
                                 text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return f"unknown ({reference} is not a git checkout)"
    return f"{commit} with uncommitted changes to its job folder" if changes else commit


def client_labels(job_dir: Path) -> dict[str, int]:
    """The `client_id_label_mapping` of the reference job's FedSM workflow."""
    config_file = job_dir / REFERENCE_SERVER_CONFIG
    for workflow in json.loads(config_file.read_text()).get("workflows", []):
        mapping = workflow.get("args", {}).get("client_id_label_mapping")
        if mapping:
            return mapping
    raise ValueError(f"{config_file}: no workflow has a client_id_label_mapping")


def check_data(data: Path, clients: Sequence[str]) -> None:
    """Raise naming what is missing unless `data` holds the slices and every client's datalist."""
    needed = [data / DATASET_FOLDER, *(data / DATALIST_FOLDER / f"{client}.json" for client in clients)]
    missing = [str(path) for path in needed if not path.exists()]
    if missing:
        raise FileNotFoundError(f"--data {data}: missing {', '.join(missing)} "
                                "(make it with `python -m data_preparation.synthetic --output DIR`)")


def this_job_settings(data: Path, rounds: int, image_size: int, labels: dict[str, int], seed: int) -> dict:
    """The `--set` settings of this job's run beside the reference."""
    return {"train.dataset_base_dir": str(data / DATASET_FOLDER),
            "train.datalist_json_path": str(data / DATALIST_FOLDER), "train.image_size": image_size,
            "train.seed": seed, "server.num_rounds": rounds, "workflow.client_id_label_mapping": labels}


def round_seconds(log_text: str) -> dict[int, float]:
    """Seconds from each round's start to its end, from the server's "Round N ... started" and "Round N
    finished" lines of a simulator log (the reference's and this job's)."""
    started, seconds = {}, {}
    for line in log_text.splitlines():
        stamp = LOG_TIME.match(line)
        if not stamp:
            continue
        when = datetime.strptime(stamp.group(1), "%Y-%m-%d %H:%M:%S,%f")
        if match := ROUND_FINISHED.search(line):
            number = int(match.group(1))
            if number in started:
                seconds[number] = (when - started[number]).total_seconds()
        elif match := ROUND_STARTED.search(line):
            started[int(match.group(1))] = when
    return seconds


@dataclasses.dataclass
class Run:
    """One simulator run of one side; `prepare` writes its job folder just before it starts (so that the
    job carries the code as it is then, not as it was hours earlier when the comparison began)."""

    side: str
    label: str
    workspace: Path
    log: Path
    command: list[str]
    prepare: Callable[[], object] | None = None
    wall_s: float = 0.0
    peak_rss: int = 0
    rounds_s: dict[int, float] = dataclasses.field(default_factory=dict)
    failure: str = ""  # why the run ended before its last round ("" when it finished)

    @property
    def record(self) -> Path:
        return self.log.with_name(RUN_RECORD)

    def save_record(self) -> None:
        write_text_atomic(self.record, json.dumps({"command": self.command, "wall_s": self.wall_s,
                                                   "peak_rss": self.peak_rss, "rounds_s": self.rounds_s,
                                                   "failure": self.failure}, indent=2))

    def load_record(self, rounds: int) -> bool:
        """Take wall time, memory, round times and failure from the record of an earlier run of the same
        command that ended: finished all `rounds`, or failed (delete its record to run it again); False
        (nothing taken) when there is no such record."""
        try:
            record = json.loads(self.record.read_text())
        except (OSError, json.JSONDecodeError):
            return False
        rounds_s = {int(number): float(seconds) for number, seconds in record.get("rounds_s", {}).items()}
        failure = record.get("failure", "")
        if record.get("command") != self.command or not (failure or len(rounds_s) == rounds):
            return False
        self.wall_s, self.peak_rss, self.rounds_s = float(record["wall_s"]), int(record["peak_rss"]), rounds_s
        self.failure = failure
        return True


def report_progress(run: Run, rounds: int, started: float, stop: threading.Event) -> None:
    """Print each round of `run` as its log says it finished, until `stop` is set."""
    reported = set()
    while not stop.wait(PROGRESS_PERIOD_S):
        text = run.log.read_text(errors="replace") if run.log.is_file() else ""
        for number, seconds in sorted(round_seconds(text).items()):
            if number not in reported:
                reported.add(number)
                print(f"[side-by-side]   {run.label}: round {number + 1}/{rounds} took {seconds:.0f} s, "
                      f"{time.monotonic() - started:.0f} s elapsed", flush=True)


def simulate(run: Run, rounds: int) -> None:
    """Run `run.command`, recording its wall time, peak memory, round times and, when it ends before its
    last round (the reference can run out of memory), why: the comparison goes on with the other runs."""
    print(f"[side-by-side] {run.label}: {' '.join(run.command)} (log {run.log})", flush=True)
    if run.workspace.exists():
        shutil.rmtree(run.workspace)
    run.record.unlink(missing_ok=True)
    if run.prepare is not None:
        run.prepare()
    started, stop = time.monotonic(), threading.Event()
    progress = threading.Thread(target=report_progress, args=(run, rounds, started, stop), daemon=True)
    progress.start()
    try:
        code, run.peak_rss, _ = run_and_sample(run.command, run.log)
    finally:
        stop.set()
        progress.join()
    run.wall_s = time.monotonic() - started
    run.rounds_s = round_seconds(run.log.read_text(errors="replace"))
    if code != 0 or len(run.rounds_s) != rounds:
        run.failure = (f"simulator exit code {code}, {len(run.rounds_s)} of {rounds} rounds finished, its processes "
                       f"peaked at {run.peak_rss / GIB:.1f} GiB of the machine's "
                       f"{psutil.virtual_memory().total / GIB:.1f} GiB; see {run.log}")
    run.save_record()
    if run.failure:
        print(f"[side-by-side] {run.label} FAILED: {run.failure}", flush=True)
        return
    print(f"[side-by-side] {run.label}: done in {run.wall_s:.0f} s (median round "
          f"{statistics.median(run.rounds_s.values()):.0f} s)", flush=True)


def read_dice(run: Run, clients: Sequence[str], rounds: int) -> dict[str, dict[int, float]]:
    """`{client: {round: Dice}}` of the global model from the run's TensorBoard files; raise naming the run
    when a client lacks one of the rounds 0..rounds-1 of a run that finished (a failed run gives what it
    logged)."""
    curves = read_workspace(run.workspace, [DICE_TAG])[1]
    dice = {}
    for client in clients:
        steps, values = curves.get(client, {}).get(DICE_TAG, ((), ()))
        dice[client] = {int(step): float(value) for step, value in zip(steps, values)}
        missing = sorted(set(range(rounds)) - set(dice[client]))
        if missing and not run.failure:
            raise RuntimeError(f"{run.label}: no {DICE_TAG} of {client} for rounds {missing} under {run.workspace}")
    return dice


@dataclasses.dataclass(frozen=True)
class Row:
    """Dice of one side at one round and site over its runs."""

    round: int
    client: str
    side: str
    runs: int
    mean: float
    low: float
    high: float


def dice_rows(dice_by_side: dict[str, list[dict[str, dict[int, float]]]]) -> list[Row]:
    """Mean, minimum and maximum over each side's runs of every (round, client), over the runs that logged
    it (a failed run stops early)."""
    rows = []
    for side, runs in dice_by_side.items():
        for client in runs[0] if runs else ():
            for number in sorted(set.union(*(set(run[client]) for run in runs))):
                values = [run[client][number] for run in runs if number in run[client]]
                rows.append(Row(number, client, side, len(values), statistics.fmean(values), min(values), max(values)))
    return sorted(rows, key=lambda row: (row.round, row.client, row.side))


def rows_csv(rows: Sequence[Row]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([field.name for field in dataclasses.fields(Row)])
    writer.writerows([row.round, row.client, row.side, row.runs, f"{row.mean:.4f}", f"{row.low:.4f}",
                      f"{row.high:.4f}"] for row in rows)
    return out.getvalue()


def rows_markdown(rows: Sequence[Row], clients: Sequence[str], sides: Sequence[str]) -> str:
    """One line per round, one column per client and side: the mean, with the min-max over runs when a
    side has several, and how many of them logged the round when not all did; '-' where none did."""
    cells = {(row.round, row.client, row.side): row for row in rows}
    side_runs = {side: max((row.runs for row in rows if row.side == side), default=0) for side in sides}
    header = ["round", *(f"{client} {side}" for client in clients for side in sides)]
    lines = ["| " + " | ".join(header) + " |", "|---:|" + "---|" * (len(header) - 1)]
    for number in sorted({row.round for row in rows}):
        values = []
        for client in clients:
            for side in sides:
                row = cells.get((number, client, side))
                text = "-" if row is None else f"{row.mean:.3f}"
                if row is not None and row.runs > 1:
                    text += f" ({row.low:.3f}-{row.high:.3f})"
                if row is not None and row.runs < side_runs[side]:
                    text += f" [{row.runs} of {side_runs[side]} runs]"
                values.append(text)
        lines.append(f"| {number} | " + " | ".join(values) + " |")
    return "\n".join(lines)


def timing_markdown(runs: Sequence[Run]) -> str:
    lines = ["| run | wall s | round s, median (min-max) | peak RSS of the process tree, GiB | ended |",
             "|---|---:|---|---:|---|"]
    for run in runs:
        seconds = list(run.rounds_s.values())
        times = f"{statistics.median(seconds):.1f} ({min(seconds):.1f}-{max(seconds):.1f})" if seconds else "-"
        lines.append(f"| {run.label} | {run.wall_s:.0f} | {times} | {run.peak_rss / GIB:.1f} | "
                     f"{'FAILED: ' + run.failure if run.failure else 'finished'} |")
    return "\n".join(lines)


def patches_markdown(patches: Sequence[Patch]) -> str:
    lines = ["| file | what | why |", "|---|---|---|"]
    lines.extend(f"| `{patch.path}` | {patch.what}: `{patch.old}` -> `{patch.new}` | {patch.why} |"
                 for patch in patches)
    return "\n".join(lines)


def nvflare_executable() -> str:
    beside_python = Path(sys.executable).with_name("nvflare")
    return str(beside_python) if beside_python.exists() else shutil.which("nvflare") or "nvflare"


def simulator_command(job: Path, workspace: Path, clients: Sequence[str]) -> list[str]:
    return [nvflare_executable(), "simulator", str(job), "-w", str(workspace), "-c", ",".join(clients),
            "-t", str(len(clients))]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference", type=Path, required=True,
                        help="a git checkout of NVIDIA/NVFlare, or its research/fed-sm folder")
    parser.add_argument("--data", type=Path, required=True,
                        help=f"folder holding {DATASET_FOLDER}/ and {DATALIST_FOLDER}/ (data_preparation output)")
    parser.add_argument("--rounds", type=int, required=True)
    parser.add_argument("--image-size", type=int, required=True, help="slices resized to this square size")
    parser.add_argument("--runs", type=int, default=1, help="runs per side; this job gets seeds 0..N-1")
    parser.add_argument("--workdir", type=Path, required=True, help="folder for the jobs, workspaces, logs and report")
    parser.add_argument("--job", type=Path, default=REPO / "jobs" / "fedsm_prostate", help="this project's job folder")
    parser.add_argument("--resume", action="store_true",
                        help=f"keep the runs of an earlier call into the same --workdir that ended, finished or "
                             f"failed (their {RUN_RECORD} names the same command); run only the others")
    args = parser.parse_args(argv)
    for name in ("rounds", "image_size", "runs"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def planned_runs(args: argparse.Namespace, data: Path, workdir: Path, reference_job: Path,
                 labels: dict[str, int]) -> list[Run]:
    """The runs of both sides, taking turns (reference, this job seed 0, reference, seed 1, ...); each of
    this job's runs derives its job into the work folder when it starts."""
    clients = sorted(labels, key=labels.get)
    runs = []
    for index in range(args.runs):
        folder = workdir / "reference" / f"run{index + 1}"
        folder.mkdir(parents=True, exist_ok=True)
        runs.append(Run(REFERENCE, f"{REFERENCE} run {index + 1}" if args.runs > 1 else REFERENCE,
                        folder / "workspace", folder / "simulator.log",
                        simulator_command(reference_job, folder / "workspace", clients)))
        folder = workdir / "this_job" / f"seed{index}"
        folder.mkdir(parents=True, exist_ok=True)
        settings = this_job_settings(data, args.rounds, args.image_size, labels, seed=index)
        runs.append(Run(THIS_JOB, f"{THIS_JOB} seed {index}", folder / "workspace", folder / "simulator.log",
                        simulator_command(folder / "job", folder / "workspace", clients),
                        prepare=functools.partial(derive_job, args.job, folder / "job", settings)))
    return runs


def dice_curves(dice: dict[str, dict[int, float]]) -> dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """`{client: {round: Dice}}` as the `{client: {tag: (steps, values)}}` curves of result_stat's plots."""
    return {client: {DICE_TAG: (np.array(sorted(points)), np.array([points[step] for step in sorted(points)]))}
            for client, points in dice.items()}


def write_outputs(workdir: Path, runs: Sequence[Run], clients: Sequence[str], rounds: int, context: str,
                  patches: Sequence[Patch]) -> str:
    """Read every finished run's Dice, write the figure, the CSV and the report into `workdir` and return
    the report; `context` is its paragraph on the command, the revision and the settings."""
    dice_by_side, curves = {REFERENCE: [], THIS_JOB: []}, {}
    for run in runs:
        dice = read_dice(run, clients, rounds)
        dice_by_side[run.side].append(dice)
        curves[run.label] = dice_curves(dice)
    rows = dice_rows(dice_by_side)
    figure = save_png(plot_runs(curves, [DICE_TAG], 0.0), workdir / FIGURE)
    write_text_atomic(workdir / TABLE_CSV, rows_csv(rows))
    report = "\n\n".join([
        "# Global model validation Dice: NVFlare research/fed-sm next to this job",
        context,
        "Changes to the reference, in a copy:\n\n" + patches_markdown(patches),
        "Timings (a round: the server's 'Round N started' to 'Round N finished' log lines):\n\n"
        + timing_markdown(runs),
        f"`{DICE_TAG}` at the start of each round (the round after the last: the final models, which only this "
        "job validates); the mean over a side's runs, min-max in brackets when there are several:\n\n"
        + rows_markdown(rows, clients, (REFERENCE, THIS_JOB)),
        f"![Global model validation Dice per round and site]({figure.name})",
    ]) + "\n"
    write_text_atomic(workdir / REPORT, report)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    data, workdir = args.data.expanduser().resolve(), args.workdir.expanduser().resolve()
    reference = args.reference.expanduser().resolve()
    patches = reference_patches(data, args.rounds, args.image_size)
    revision = reference_revision(reference)
    reference_job = copy_patched_reference(reference, workdir / "reference_job", patches)
    labels = client_labels(reference_job)
    clients = sorted(labels, key=labels.get)
    check_data(data, clients)
    print(f"[side-by-side] reference {revision}, patched copy {reference_job}; clients {', '.join(clients)}",
          flush=True)
    runs = planned_runs(args, data, workdir, reference_job, labels)
    context = (f"Command: `{shlex.join(['python', 'tools/reference_side_by_side.py', *argv])}`\n\n"
               f"Reference: `{reference_job_folder(reference)}` at {revision}, no seed setting. This job: "
               f"`{args.job}`, seeds 0..{args.runs - 1}. {args.rounds} rounds, {args.image_size}x{args.image_size} "
               f"slices, data `{data}`.")
    for finished, run in enumerate(runs, start=1):
        if args.resume and run.load_record(args.rounds):
            print(f"[side-by-side] {run.label}: kept from an earlier call ({run.record})", flush=True)
        else:
            simulate(run, args.rounds)
        report = write_outputs(workdir, runs[:finished], clients, args.rounds, context, patches)
        print(f"[side-by-side] {finished} of {len(runs)} runs in {workdir / REPORT}", flush=True)
    print(report)
    failed = [run.label for run in runs if run.failure]
    if failed:
        print(f"[side-by-side] failed: {', '.join(failed)} (their logged rounds are in the table)", flush=True)
        return 1
    print(f"[side-by-side] wrote {workdir / REPORT}, {workdir / TABLE_CSV}, {workdir / FIGURE}", flush=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (PatchError, FileNotFoundError, ValueError, RuntimeError) as error:
        sys.exit(f"reference_side_by_side: error: {error}")
