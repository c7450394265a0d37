"""Fixtures of the end-to-end tests (helpers live in `e2e_helpers`)."""

from pathlib import Path

import pytest
from tiny_runs import make_tiny_data


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """Three synthetic sites with 3 cases each, sliced and split."""
    return make_tiny_data(tmp_path_factory.mktemp("data"))
