"""Plot the FedSM validation curves of every site from TensorBoard event files.

    python -m result_stat.plot_tensorboard_events --workspace /tmp/nvflare/fedsm_prostate
    python -m result_stat.plot_tensorboard_events --workspace /tmp/download/JOB_ID   # a downloaded job
    python result_stat/plot_tensorboard_events.py --workspace WS --tags train_loss train_loss_selector
    python -m result_stat.plot_tensorboard_events --runs ours=WS1 reference=WS2 --tags val_metric_global_model
    python -m result_stat.plot_tensorboard_events --workspace WS --converged-at 0.9   # selector convergence round

The curves come from the server's experiment tracking (`tb_events/<site>` in the server's job
workspace, which a simulator workspace, a POC workspace and a downloaded job all hold), or, for a run
without it, from the event files the sites wrote into their app folders (`result_stat.workspace`).
One subplot per tag, one line per site (x = round), smoothed like TensorBoard (debiased exponential
moving average) over the raw values drawn faintly. With `--runs`, several runs on one figure: one row
per tag, one column per site, one line per run (e.g. this job next to NVFlare's research/fed-sm,
which logs the same tags). Reads the event files with TensorBoard's own
reader (no TensorFlow needed) and writes a PNG atomically (no window is opened). With
`--converged-at T`, it also prints for each run the first round from which every site's
`--converged-tag` (default the selector's validation accuracy) stays at or above T to the last
round, or "never", and each site's last value.
"""

import argparse
import logging
import math
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from fedsm.io.atomic import atomic_path
from result_stat.workspace import event_files, find_event_dirs

DEFAULT_WORKSPACE = "/tmp/nvflare/fedsm_prostate"
DEFAULT_OUTPUT_NAME = "fedsm_validation_curves.png"
DEFAULT_CONVERGED_TAG = "val_metric_select_model"
VALIDATION_TAGS = ("val_metric_global_model", "val_metric_person_model", "val_metric_select_model")
TITLES = {
    "val_metric_global_model": "Global model: validation Dice",
    "val_metric_person_model": "Personalized model: validation Dice",
    "val_metric_select_model": "Selector: validation accuracy",
    "train_loss": "Global model: training loss",
    "train_loss_personalized": "Personalized model: training loss",
    "train_loss_selector": "Selector: training loss",
}

logger = logging.getLogger("plot_tensorboard_events")

Curves = dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]  # {site: {tag: (steps, values)}}


def smooth(values: Iterable[float], weight: float) -> np.ndarray:
    """TensorBoard's scalar smoothing: an exponential moving average started at 0 and debiased.

    `s_t = m_t / (1 - weight**n_t)` with `m_t = weight * m_{t-1} + (1 - weight) * x_t`, where `n_t`
    counts the finite values so far; non-finite values are passed through and skipped. Weight 0
    returns the values unchanged.
    """
    if not 0.0 <= weight < 1.0:
        raise ValueError(f"smoothing weight must be in [0, 1), got {weight}")
    values = np.asarray(list(values), dtype=np.float64)
    smoothed = np.empty_like(values)
    last, count = 0.0, 0
    for index, value in enumerate(values):
        if not math.isfinite(value):
            smoothed[index] = value
            continue
        last = last * weight + (1.0 - weight) * value
        count += 1
        smoothed[index] = last / (1.0 - weight**count)
    return smoothed


def read_scalars(event_dir: str | Path, tags: Sequence[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """`{tag: (steps, values)}` for those of `tags` logged in the event files of `event_dir`.

    Steps are sorted; when a step was logged more than once (a resumed run), the last value wins.
    Raises `FileNotFoundError` naming `event_dir` when it holds no event files.
    """
    event_dir = Path(event_dir)
    if not event_files(event_dir):
        raise FileNotFoundError(f"no TensorBoard event files in {event_dir}")
    accumulator = EventAccumulator(str(event_dir), size_guidance={"scalars": 0})
    accumulator.Reload()
    available = set(accumulator.Tags().get("scalars", []))
    result = {}
    for tag in tags:
        if tag not in available:
            continue
        by_step = {event.step: event.value for event in accumulator.Scalars(tag)}
        steps = np.array(sorted(by_step), dtype=np.int64)
        result[tag] = (steps, np.array([by_step[step] for step in steps], dtype=np.float64))
    return result


def stays_from(steps: np.ndarray, values: np.ndarray, threshold: float) -> int | None:
    """The first step from which `values` stay at or above `threshold` up to the last one; None when
    the last value is below it (a NaN counts as below) or there are no values. The threshold is taken
    at float32, the precision of TensorBoard scalars, so that a logged 0.9 counts as 0.9."""
    below = np.flatnonzero(~(np.asarray(values, dtype=np.float64) >= np.float32(threshold)))
    first = below[-1] + 1 if below.size else 0
    return int(steps[first]) if first < len(values) else None


def converged_at(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], threshold: float) -> int | None:
    """The first round from which every site's curve of one tag (`{site: (steps, values)}`) stays at or
    above `threshold` to its end: the latest of the sites' `stays_from`; None when a site never does
    or there is no site."""
    rounds = [stays_from(steps, values, threshold) for steps, values in curves.values()]
    return None if not rounds or None in rounds else max(rounds)


def convergence_line(run: str, curves: Curves, tag: str, threshold: float) -> str:
    """One line for `run`: the `converged_at` round of `tag` (or "never") and each site's last value."""
    empty = (np.array([], dtype=np.int64), np.array([]))
    per_site = {site: scalars.get(tag, empty) for site, scalars in curves.items()}
    found = converged_at(per_site, threshold)
    lasts = ", ".join(f"{site} {values[-1]:.4f}" if len(values) else f"{site} -"
                      for site, (_, values) in per_site.items())
    status = "never" if found is None else f"from round {found}"
    return f"{run}: {tag} >= {threshold:g} {status} (last: {lasts})"


def available_tags(event_dir: str | Path) -> list[str]:
    """Every scalar tag in the event files of `event_dir`."""
    accumulator = EventAccumulator(str(event_dir), size_guidance={"scalars": 0})
    accumulator.Reload()
    return sorted(accumulator.Tags().get("scalars", []))


def smoothing_caption(weight: float) -> str:
    return "raw values" if weight == 0 else f"smoothing {weight:g} (raw values faint)"


def plot_curves(
    curves: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]],
    tags: Sequence[str],
    weight: float,
    title: str = "",
) -> Figure:
    """A figure with one subplot per tag and one line per site; `curves` is `{site: {tag: (steps, values)}}`."""
    figure = Figure(figsize=(5.2 * len(tags), 4.2), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, len(tags), squeeze=False)[0]
    colors = {site: f"C{index % 10}" for index, site in enumerate(curves)}
    handles = {}
    for axis, tag in zip(axes, tags):
        plotted = False
        for site, scalars in curves.items():
            if tag not in scalars:
                continue
            steps, values = scalars[tag]
            axis.plot(steps, values, color=colors[site], alpha=0.25, linewidth=1.0)
            (handles[site],) = axis.plot(steps, smooth(values, weight), color=colors[site], linewidth=1.8, label=site)
            plotted = True
        axis.set_title(TITLES.get(tag, tag), fontsize=11)
        axis.set_xlabel("round")
        axis.set_ylabel(tag, fontsize=9)
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.grid(True, alpha=0.3)
        if not plotted:
            axis.text(0.5, 0.5, f"no data for\n{tag}", ha="center", va="center", transform=axis.transAxes)
    if handles:
        figure.legend([handles[site] for site in curves if site in handles], [site for site in curves if site in handles],
                      loc="outside lower center", ncol=min(len(handles), 6), fontsize=9, frameon=False)
    caption = smoothing_caption(weight)
    figure.suptitle(f"{title}: {caption}" if title else caption, fontsize=11)
    return figure


def plot_runs(
    runs: dict[str, dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]],
    tags: Sequence[str],
    weight: float,
) -> Figure:
    """Several runs on one figure: one row per tag, one column per site, one line per run;
    `runs` is `{run: {site: {tag: (steps, values)}}}`."""
    sites = sorted({site for curves in runs.values() for site in curves})
    figure = Figure(figsize=(4.6 * len(sites), 3.8 * len(tags)), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(tags), len(sites), squeeze=False)
    handles = {}
    for row, tag in enumerate(tags):
        for column, site in enumerate(sites):
            axis = axes[row][column]
            for index, (run, curves) in enumerate(runs.items()):
                if tag not in curves.get(site, {}):
                    continue
                steps, values = curves[site][tag]
                axis.plot(steps, values, color=f"C{index % 10}", alpha=0.25, linewidth=1.0)
                (handles[run],) = axis.plot(steps, smooth(values, weight), color=f"C{index % 10}", linewidth=1.8)
            axis.set_title(f"{site}: {TITLES.get(tag, tag)}", fontsize=10)
            axis.set_xlabel("round")
            axis.xaxis.set_major_locator(MaxNLocator(integer=True))
            axis.grid(True, alpha=0.3)
    if handles:
        figure.legend(list(handles.values()), list(handles), loc="outside lower center", ncol=min(len(handles), 6),
                      fontsize=9, frameon=False)
    figure.suptitle(smoothing_caption(weight), fontsize=11)
    return figure


def parse_run(text: str) -> tuple[str, Path]:
    """`LABEL=WORKSPACE` of `--runs` as (label, path)."""
    label, separator, path = text.partition("=")
    if not separator or not label or not path:
        raise argparse.ArgumentTypeError(f"expected LABEL=WORKSPACE, got '{text}'")
    return label, Path(path).expanduser()


def save_png(figure: Figure, output: str | Path, dpi: int = 120) -> Path:
    """Write `figure` to `output` as a PNG, atomically."""
    output = Path(output)
    with atomic_path(output) as tmp:
        figure.savefig(tmp, format="png", dpi=dpi)
    return output


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workspace", default=DEFAULT_WORKSPACE,
                        help="the run: simulator workspace, downloaded job, server job workspace, POC workspace or "
                             f"client app folder (default {DEFAULT_WORKSPACE})")
    parser.add_argument("--runs", nargs="+", type=parse_run, metavar="LABEL=WORKSPACE",
                        help="compare runs on one figure (one column per site, one line per run); "
                             "--output is then required")
    parser.add_argument("--tags", nargs="+", default=list(VALIDATION_TAGS),
                        help="scalar tags to plot, one subplot each (default: the three validation metrics)")
    parser.add_argument("--smoothing", type=float, default=0.8,
                        help="TensorBoard smoothing weight in [0, 1) (default 0.8; 0 = raw values)")
    parser.add_argument("--output", default=None,
                        help=f"PNG to write (default <workspace>/{DEFAULT_OUTPUT_NAME})")
    parser.add_argument("--converged-at", type=float, metavar="THRESHOLD",
                        help="also print, per run, the first round from which every site's --converged-tag stays "
                             "at or above THRESHOLD to the end (or 'never'), and each site's last value")
    parser.add_argument("--converged-tag", default=DEFAULT_CONVERGED_TAG,
                        help=f"the tag --converged-at applies to (default {DEFAULT_CONVERGED_TAG})")
    args = parser.parse_args(argv)
    if not 0.0 <= args.smoothing < 1.0:
        parser.error(f"--smoothing must be in [0, 1), got {args.smoothing}")
    if args.runs and not args.output:
        parser.error("--runs needs --output")
    if args.runs and len({label for label, _ in args.runs}) < len(args.runs):
        parser.error("--runs labels must differ")
    return args


def read_workspace(workspace: Path, tags: Sequence[str]) -> tuple[dict[str, Path], Curves]:
    """The event folder of every site of a run and `{site: {tag: (steps, values)}}`, logged per site;
    exits naming the workspace when it has no event files."""
    try:
        event_dirs = find_event_dirs(workspace)
        curves = {site: read_scalars(folder, tags) for site, folder in event_dirs.items()}
    except FileNotFoundError as error:
        raise SystemExit(f"plot_tensorboard_events: error: {error}") from error
    for site, folder in event_dirs.items():
        logger.info("%s: %s (%s)", site, folder, ", ".join(f"{tag}: {len(s)} rounds" for tag, (s, _) in curves[site].items()) or "none of the tags")
    return event_dirs, curves


def print_convergence(run: str, curves: Curves, args: argparse.Namespace) -> None:
    """Print `convergence_line` for `run` when `--converged-at` was given."""
    if args.converged_at is not None:
        print(convergence_line(run, curves, args.converged_tag, args.converged_at))


def main(argv: Sequence[str] | None = None) -> Path:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("tensorboard").setLevel(logging.WARNING)
    read_tags = list(dict.fromkeys([*args.tags, args.converged_tag])) if args.converged_at is not None else args.tags
    if args.runs:
        runs = {label: read_workspace(workspace, read_tags)[1] for label, workspace in args.runs}
        for label, curves in runs.items():
            if not any(tag in scalars for tag in args.tags for scalars in curves.values()):
                raise SystemExit(f"plot_tensorboard_events: error: run '{label}' has none of the tags {list(args.tags)}")
            print_convergence(label, curves, args)
        output = save_png(plot_runs(runs, args.tags, args.smoothing), Path(args.output).expanduser())
        print(f"Wrote {output}")
        return output
    workspace = Path(args.workspace).expanduser()
    event_dirs, curves = read_workspace(workspace, read_tags)
    if not any(tag in scalars for tag in args.tags for scalars in curves.values()):
        found = sorted({tag for folder in event_dirs.values() for tag in available_tags(folder)})
        raise SystemExit(
            f"plot_tensorboard_events: error: none of the tags {list(args.tags)} is in the event files under "
            f"{workspace}; tags found: {found}"
        )
    for tag in args.tags:
        if not any(tag in scalars for scalars in curves.values()):
            logger.warning("tag '%s' is in no event file under %s; its subplot stays empty", tag, workspace)
    print_convergence(str(workspace), curves, args)
    figure = plot_curves(curves, args.tags, args.smoothing, title=f"FedSM {workspace}")
    output = Path(args.output).expanduser() if args.output else workspace / DEFAULT_OUTPUT_NAME
    save_png(figure, output)
    print(f"Wrote {output}")
    return output


if __name__ == "__main__":
    main(sys.argv[1:])
