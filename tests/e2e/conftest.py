"""Fixtures of the end-to-end tests (helpers live in `e2e_helpers`)."""

from pathlib import Path

import pytest
from tiny_runs import TinyRun, shared_fedsm_run, shared_tiny_data


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """Three synthetic sites with 3 cases each (and the UNSEEN site, unused here), sliced and split;
    the same data as the gap tests'."""
    return shared_tiny_data(tmp_path_factory)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> TinyRun:
    """The tiny job (`e2e_helpers.tiny_overrides(tiny_data)`) run once in the simulator for the session."""
    return shared_fedsm_run(tmp_path_factory)


@pytest.fixture(scope="session")
def finished_run(tiny_run) -> tuple[Path, str]:
    """(workspace, output) of `tiny_run`."""
    return tiny_run.workspace, tiny_run.output
