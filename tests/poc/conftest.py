"""Fixtures of the deployment and fault tests. Helpers live in `poc_helpers` (imported by the tests)."""

import subprocess
import sys
from pathlib import Path

import pytest


def pytest_configure(config):
    config.addinivalue_line("markers", "poc: starts a real NVFlare POC federation (server and client processes); "
                                       "slow, deselect with -m 'not poc'")


@pytest.fixture(scope="session")
def poc_data(tmp_path_factory) -> Path:
    """Three synthetic sites with 3 cases each, sliced and split (dataset_2D/, datalist_2D/)."""
    root = tmp_path_factory.mktemp("poc_data")
    subprocess.run([sys.executable, "-m", "data_preparation.synthetic", "--output", str(root),
                    "--cases-per-site", "3", "--seed", "1"], check=True, capture_output=True)
    return root
