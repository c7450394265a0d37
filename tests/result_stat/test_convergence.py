"""The convergence round of a tag over every site (`--converged-at`) from TensorBoard event files."""

import math
from pathlib import Path

import numpy as np
import pytest
from torch.utils.tensorboard import SummaryWriter

from result_stat import plot_tensorboard_events as plot

TAG = "val_metric_select_model"
# client_A reaches 0.9 at round 1, dips back at round 3 and stays from round 4: the "stays" rule gives 4.
# client_B stays from round 2. client_C never reaches 0.9.
CONVERGING = {"client_A": [0.2, 0.95, 1.0, 0.5, 0.9, 1.0], "client_B": [0.0, 0.3, 0.92, 0.97, 1.0, 0.99]}
NEVER = {"client_A": CONVERGING["client_A"], "client_C": [0.1, 0.4, 0.89, 0.6, 0.8, 0.85]}


def _workspace(root: Path, sites: dict[str, list[float]]) -> Path:
    """A simulator workspace whose clients logged `TAG` (step = round) and a global Dice."""
    (root / "server" / "simulate_job" / "app_server").mkdir(parents=True)
    for site, values in sites.items():
        writer = SummaryWriter(log_dir=str(root / site / "simulate_job" / f"app_{site}"))
        for step, value in enumerate(values):
            writer.add_scalar(TAG, value, step)
            writer.add_scalar("val_metric_global_model", 0.5, step)
        writer.close()
    return root


def _curve(values, steps=None):
    return (np.arange(len(values)) if steps is None else np.array(steps), np.array(values, dtype=np.float64))


def test_stays_from_takes_the_round_after_the_last_dip():
    assert plot.stays_from(*_curve(CONVERGING["client_A"]), 0.9) == 4  # at or above: 0.9 counts
    assert plot.stays_from(*_curve([0.95, 1.0]), 0.9) == 0
    assert plot.stays_from(*_curve([0.5, 0.95, 1.0], steps=[10, 20, 30]), 0.9) == 20  # a round, not an index


@pytest.mark.parametrize("values", [NEVER["client_C"], [0.95, 1.0, 0.5], [0.95, math.nan], []])
def test_stays_from_is_none_when_the_last_value_is_below(values):
    assert plot.stays_from(*_curve(values), 0.9) is None


def test_converged_at_is_the_latest_site_or_none():
    assert plot.converged_at({site: _curve(v) for site, v in CONVERGING.items()}, 0.9) == 4
    assert plot.converged_at({site: _curve(v) for site, v in CONVERGING.items()}, 0.95) == 5  # client_A's 0.9
    assert plot.converged_at({site: _curve(v) for site, v in CONVERGING.items()}, 0.5) == 2  # client_B's 0.3
    assert plot.converged_at({site: _curve(v) for site, v in NEVER.items()}, 0.9) is None
    assert plot.converged_at({}, 0.9) is None


def test_converged_at_on_curves_read_from_event_files(tmp_path):
    _, curves = plot.read_workspace(_workspace(tmp_path / "ws", CONVERGING), [TAG])  # 0.9 stored as 0.89999998
    assert plot.converged_at({site: scalars[TAG] for site, scalars in curves.items()}, 0.9) == 4
    _, curves = plot.read_workspace(_workspace(tmp_path / "never", NEVER), [TAG])
    assert plot.converged_at({site: scalars[TAG] for site, scalars in curves.items()}, 0.9) is None


def test_cli_prints_the_round_or_never_and_each_sites_last_value(tmp_path, capsys):
    converging, never = _workspace(tmp_path / "ws", CONVERGING), _workspace(tmp_path / "never", NEVER)
    plot.main(["--workspace", str(converging), "--converged-at", "0.9"])
    out = capsys.readouterr().out
    assert f"{converging}: {TAG} >= 0.9 from round 4 (last: client_A 1.0000, client_B 0.9900)" in out
    plot.main(["--runs", f"ours={converging}", f"other={never}", "--tags", "val_metric_global_model",
               "--converged-at", "0.9", "--output", str(tmp_path / "runs.png")])
    lines = capsys.readouterr().out.splitlines()
    assert lines[:2] == [f"ours: {TAG} >= 0.9 from round 4 (last: client_A 1.0000, client_B 0.9900)",
                         f"other: {TAG} >= 0.9 never (last: client_A 1.0000, client_C 0.8500)"]


def test_cli_converged_tag_and_a_site_without_it(tmp_path, capsys):
    workspace = _workspace(tmp_path / "ws", CONVERGING)
    plot.main(["--workspace", str(workspace), "--converged-at", "0.5", "--converged-tag", "val_metric_global_model"])
    assert "val_metric_global_model >= 0.5 from round 0" in capsys.readouterr().out
    plot.main(["--workspace", str(workspace), "--converged-at", "0.9", "--converged-tag", "no_such_tag"])
    assert "no_such_tag >= 0.9 never (last: client_A -, client_B -)" in capsys.readouterr().out
    plot.main(["--workspace", str(workspace)])
    assert ">=" not in capsys.readouterr().out  # no report without --converged-at
