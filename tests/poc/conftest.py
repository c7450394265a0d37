"""Fixtures of the deployment and fault tests. Helpers live in `poc_helpers` (imported by the tests)."""

from pathlib import Path

import pytest
from tiny_runs import make_tiny_data, settle


def pytest_configure(config):
    config.addinivalue_line("markers", "poc: starts a real NVFlare POC federation (server and client processes); "
                                       "slow, deselect with -m 'not poc'")


@pytest.fixture(scope="module", autouse=True)
def quiet_machine():
    """No simulator run of another module goes on beside these tests: several of them race timeouts."""
    settle()


@pytest.fixture(scope="session")
def poc_data(tmp_path_factory) -> Path:
    """Three synthetic sites with 3 cases each, sliced and split (dataset_2D/, datalist_2D/)."""
    return make_tiny_data(tmp_path_factory.mktemp("poc_data"))
