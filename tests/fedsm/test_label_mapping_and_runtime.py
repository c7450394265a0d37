"""NVFlare-free helpers: the server's label mapping check and the per-process thread choice."""

import os

import pytest

from fedsm.core.label_mapping import check_label_mapping
from fedsm.runtime import cpu_threads


def test_a_valid_label_mapping_is_returned_as_is():
    assert check_label_mapping({"site_a": 1, "site_b": 0}, 2) == {"site_a": 1, "site_b": 0}


@pytest.mark.parametrize("mapping, message", [
    ({}, "empty"),
    ({"site_a": 0, "site_b": 2}, r"\['site_b'\] = 2 is not a label in \[0, 2\)"),
    ({"site_a": -1}, r"\['site_a'\] = -1"),
    ({"site_a": True}, r"\['site_a'\] = True"),
    ({"site_a": 1.0}, r"\['site_a'\] = 1.0"),
    ({"site_a": 0, "site_b": 0}, "the same label"),
])
def test_an_invalid_label_mapping_is_rejected_naming_the_client(mapping, message):
    with pytest.raises(ValueError, match=message):
        check_label_mapping(mapping, 2)


@pytest.mark.parametrize("configured, clients, expected", [
    (3, 8, 3),
    (0, 1, os.cpu_count() or 1),
    (0, 10_000, 1),
    (0, 0, os.cpu_count() or 1),
])
def test_cpu_threads_share_the_cores_among_the_clients_of_a_host_unless_configured(configured, clients, expected):
    assert cpu_threads(configured, clients) == expected
