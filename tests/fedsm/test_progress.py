"""Progress bars redraw live on a terminal and at most once a minute into a log file."""

import io
import sys

from fedsm.io.progress import LOG_REFRESH_SECONDS, progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_bar_into_a_log_file_is_drawn_at_start_and_end_only(monkeypatch):
    log = io.StringIO()
    monkeypatch.setattr(sys, "stderr", log)
    bar = progress(range(3), desc="slicing")
    assert (bar.mininterval, bar.maxinterval) == (LOG_REFRESH_SECONDS, LOG_REFRESH_SECONDS)
    assert list(bar) == [0, 1, 2]
    assert log.getvalue().count("\r") == 2 and "slicing: 100%" in log.getvalue()


def test_a_bar_on_a_terminal_keeps_tqdms_live_refresh(monkeypatch):
    monkeypatch.setattr(sys, "stderr", Terminal())
    bar = progress(range(3), desc="slicing", delay=2)
    assert bar.mininterval < 1 and bar.delay == 2
    assert list(bar) == [0, 1, 2]
