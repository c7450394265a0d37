"""Progress bars for terminals and log files alike: every tqdm bar of the project comes from `progress`."""

import sys
from collections.abc import Iterable

from tqdm import tqdm

LOG_REFRESH_SECONDS = 60.0  # where stderr is a file or a pipe: at most one redraw a minute


def progress(iterable: Iterable, **options) -> tqdm:
    """`tqdm(iterable, **options)` on stderr. On a terminal the bar is live; where stderr is not a
    terminal (a log file, a pipe, a simulator's captured output) each redraw would add to the log, so
    the bar redraws at most every `LOG_REFRESH_SECONDS` and on closing."""
    if not (hasattr(sys.stderr, "isatty") and sys.stderr.isatty()):
        options = {**options, "mininterval": LOG_REFRESH_SECONDS, "maxinterval": LOG_REFRESH_SECONDS}
    return tqdm(iterable, **options)
