"""tools/profile_client_round.py times every part of one client's round on tiny data, and names an
unknown client."""

import importlib.util
import re

import pytest
import torch
from e2e_helpers import REPO, tiny_overrides

PARTS = ("load the site's data", "iterate the cached training loader once", "one UNet epoch, batch size 1",
         "selector full-batch gradient, batches of 4", "one Adam step of the selector",
         "selector validation, batches of 4", "one UNet validation")


def profile_main(argv: list[str]) -> int:
    spec = importlib.util.spec_from_file_location("profile_client_round", REPO / "tools" / "profile_client_round.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(argv)


def settings(data) -> list[str]:
    """`--set` arguments of the tiny job (32x32, light selector) on `data`, selector batches of 4."""
    overrides = {**tiny_overrides(data), "train.selector_batch_size": 4}
    return [arg for key, value in overrides.items() for arg in ("--set", f"{key}={value}")]


@pytest.fixture(autouse=True)
def torch_threads():
    """The script sets the process's torch threads; the tests after these get theirs back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_every_part_of_the_round_is_timed_under_the_settings_given(tiny_data, capsys):
    assert profile_main([*settings(tiny_data), "--client", "client_MSD", "--threads", "1"]) == 0
    output = capsys.readouterr().out
    header = output.splitlines()[0]
    for setting in ("client client_MSD (label 1)", "image size 32x32", "selector light", "threads 1",
                    "selector_batch_size 4", "batch_size 1"):
        assert setting in header
    slices = re.search(r"(\d+) training / (\d+) validation slices", header)
    assert slices and int(slices[1]) > 0 and int(slices[2]) > 0
    rows = dict(re.findall(r"^\| (.+?) \| ([\d.]+) \|$", output, re.MULTILINE))
    for part in PARTS:
        seconds = [float(value) for name, value in rows.items() if name.startswith(part)]
        assert len(seconds) == 1 and seconds[0] > 0, f"no time for '{part}' in:\n{output}"
    assert re.search(r"peak RSS of this process: [\d.]+ GiB", output)


@pytest.mark.parametrize("extra, client", [
    ([], "client_NOWHERE"),
    (["--set", 'workflow.client_id_label_mapping={"client_I2CVB": 0, "client_NODATA": 1}'], "client_NODATA"),
])
def test_a_client_outside_the_label_mapping_or_the_datalists_is_named(tiny_data, capsys, extra, client):
    with pytest.raises(SystemExit) as stopped:
        profile_main([*settings(tiny_data), *extra, "--client", client, "--threads", "1"])
    assert stopped.value.code == 2
    assert client in capsys.readouterr().err
