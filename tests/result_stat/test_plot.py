"""Smoothing, reading TensorBoard event files and the validation-curve plot CLI."""

import math
import os
from pathlib import Path

import numpy as np
import pytest
from torch.utils.tensorboard import SummaryWriter

from result_stat import plot_tensorboard_events as plot
from result_stat.workspace import TRACKING_FOLDER, find_client_apps, find_event_dirs, find_tracking_sites

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CURVES = {
    "client_A": {"val_metric_global_model": [0.1, 0.3, 0.5], "val_metric_person_model": [0.2, 0.4, 0.6],
                 "val_metric_select_model": [0.0, 1.0, 1.0], "train_loss": [0.9, 0.7]},
    "client_B": {"val_metric_global_model": [0.15, 0.25, 0.45], "val_metric_person_model": [0.1, 0.2, 0.7],
                 "val_metric_select_model": [1.0, 0.0, 1.0], "train_loss": [0.8, 0.6]},
}


def _write_events(folder: Path, scalars: dict[str, list[float]]) -> None:
    writer = SummaryWriter(log_dir=str(folder))
    for tag, values in scalars.items():
        for step, value in enumerate(values):
            writer.add_scalar(tag, value, step)
    writer.close()


def _simulator_workspace(root: Path) -> Path:
    workspace = root / "ws"
    (workspace / "server" / "simulate_job" / "app_server").mkdir(parents=True)
    for client, scalars in CURVES.items():
        _write_events(workspace / client / "simulate_job" / f"app_{client}", scalars)
    return workspace


def _server_tracking(server_job: Path, curves: dict = CURVES) -> Path:
    """The server's job workspace as the job's TBAnalyticsReceiver leaves it: `tb_events/<site>`."""
    (server_job / "app_server").mkdir(parents=True, exist_ok=True)
    for client, scalars in curves.items():
        _write_events(server_job / TRACKING_FOLDER / client, scalars)
    return server_job / TRACKING_FOLDER


# --- smooth ---------------------------------------------------------------------------------

def test_smooth_matches_hand_computed_tensorboard_values():
    # m1 = 0.5*2 = 1 -> 1/(1-0.5) = 2; m2 = 0.5*1 + 0.5*4 = 2.5 -> 2.5/0.75; m3 = 1.25 + 4 = 5.25 -> 5.25/0.875
    assert plot.smooth([2.0, 4.0, 8.0], 0.5) == pytest.approx([2.0, 10.0 / 3.0, 6.0])
    # weight 0.8: m1 = 0.2 -> 1.0; m2 = 0.16 -> 0.16 / 0.36
    assert plot.smooth([1.0, 0.0], 0.8) == pytest.approx([1.0, 0.16 / 0.36])


def test_smooth_keeps_constants_and_passes_non_finite_values():
    assert plot.smooth([5.0, 5.0, 5.0, 5.0], 0.8) == pytest.approx([5.0] * 4)
    assert plot.smooth([1.0, 2.0, 3.0], 0.0).tolist() == [1.0, 2.0, 3.0]
    smoothed = plot.smooth([1.0, math.nan, 3.0], 0.5)
    assert smoothed[0] == pytest.approx(1.0) and math.isnan(smoothed[1])
    assert smoothed[2] == pytest.approx((0.5 * 0.5 + 0.5 * 3.0) / 0.75)  # the NaN is skipped
    assert plot.smooth([], 0.8).size == 0


@pytest.mark.parametrize("weight", [-0.1, 1.0, 1.5])
def test_smooth_rejects_bad_weights(weight):
    with pytest.raises(ValueError, match="smoothing weight"):
        plot.smooth([1.0], weight)


# --- read_scalars -----------------------------------------------------------------------------

def test_read_scalars_reads_what_summary_writer_wrote(tmp_path):
    _write_events(tmp_path, CURVES["client_A"])
    scalars = plot.read_scalars(tmp_path, ["val_metric_global_model", "train_loss", "not_logged"])
    assert set(scalars) == {"val_metric_global_model", "train_loss"}
    steps, values = scalars["val_metric_global_model"]
    assert steps.tolist() == [0, 1, 2]
    np.testing.assert_allclose(values, [0.1, 0.3, 0.5], rtol=1e-6)
    steps, values = scalars["train_loss"]
    assert steps.tolist() == [0, 1]
    np.testing.assert_allclose(values, [0.9, 0.7], rtol=1e-6)


def test_read_scalars_sorts_steps_and_reads_every_event_file(tmp_path):
    writer = SummaryWriter(log_dir=str(tmp_path), filename_suffix=".first")
    writer.add_scalar("val_metric_global_model", 0.3, 2)
    writer.add_scalar("val_metric_global_model", 0.1, 0)
    writer.close()
    writer = SummaryWriter(log_dir=str(tmp_path), filename_suffix=".second")
    writer.add_scalar("val_metric_global_model", 0.2, 1)
    writer.close()
    assert len(list(tmp_path.glob("events.out.tfevents.*"))) == 2
    steps, values = plot.read_scalars(tmp_path, ["val_metric_global_model"])["val_metric_global_model"]
    assert steps.tolist() == [0, 1, 2]
    np.testing.assert_allclose(values, [0.1, 0.2, 0.3], rtol=1e-6)


def test_read_scalars_without_event_files_names_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        plot.read_scalars(tmp_path, ["train_loss"])


# --- workspace helpers ------------------------------------------------------------------------

def test_find_client_apps_and_event_dirs(tmp_path):
    workspace = _simulator_workspace(tmp_path)
    apps = find_client_apps(workspace)
    assert apps == {client: workspace / client / "simulate_job" / f"app_{client}" for client in CURVES}
    assert find_event_dirs(workspace) == apps
    assert find_client_apps(apps["client_A"]) == {"client_A": apps["client_A"]}
    # POC-style site folders: <site>/<job id>/app_<site>
    poc = tmp_path / "poc"
    _write_events(poc / "site-1" / "job-123" / "app_site-1", CURVES["client_A"])
    assert find_event_dirs(poc) == {"site-1": poc / "site-1" / "job-123" / "app_site-1"}
    # any other folder of event files
    loose = tmp_path / "loose"
    _write_events(loose / "run_x", CURVES["client_B"])
    assert find_event_dirs(loose) == {"run_x": loose / "run_x"}


def test_the_servers_tracking_folder_comes_before_the_clients_event_files(tmp_path):
    workspace = _simulator_workspace(tmp_path)  # sites that also wrote their own (`local_tensorboard`)
    server_job = workspace / "server" / "simulate_job"
    tracking = _server_tracking(server_job, {"client_A": {"train_loss": [1.0]}, "client_B": {"train_loss": [2.0]}})
    expected = {client: tracking / client for client in CURVES}
    for path in (workspace, server_job, tracking):
        assert find_event_dirs(path) == expected, path
    assert plot.read_workspace(workspace, ["train_loss"])[1]["client_B"]["train_loss"][1].tolist() == [2.0]


def test_a_downloaded_job_alone_draws_every_site(tmp_path):
    download = tmp_path / "download"
    tracking = _server_tracking(download / "2f1c-job-id" / "workspace")
    assert find_tracking_sites(download) == {client: tracking / client for client in CURVES}
    output = plot.main(["--workspace", str(download)])
    assert output == download / plot.DEFAULT_OUTPUT_NAME and output.read_bytes().startswith(PNG_SIGNATURE)
    _, curves = plot.read_workspace(download, list(plot.VALIDATION_TAGS))
    figure = plot.plot_curves(curves, plot.VALIDATION_TAGS, 0.8)
    assert [text.get_text() for text in figure.legends[0].get_texts()] == list(CURVES)


def test_of_several_jobs_in_a_poc_workspace_the_newest_tracking_folder_is_read(tmp_path):
    loss = {"train_loss": [1.0]}
    new = _server_tracking(tmp_path / "server" / "job-1", {"site-1": loss, "site-2": loss})
    old = _server_tracking(tmp_path / "server" / "job-2", {"site-1": loss})
    os.utime(old, (1_000_000_000, 1_000_000_000))
    os.utime(new, (2_000_000_000, 2_000_000_000))  # the newer folder by its time, not by its name
    assert find_tracking_sites(tmp_path) == {"site-1": new / "site-1", "site-2": new / "site-2"}
    assert find_tracking_sites(tmp_path / "server" / "job-2") == {"site-1": old / "site-1"}
    assert find_tracking_sites(tmp_path / "ws_without_tracking") == {}


# --- CLI ------------------------------------------------------------------------------------

def test_cli_writes_a_png_into_the_workspace(tmp_path, capsys):
    workspace = _simulator_workspace(tmp_path)
    output = plot.main(["--workspace", str(workspace)])
    assert output == workspace / plot.DEFAULT_OUTPUT_NAME
    content = output.read_bytes()
    assert content.startswith(PNG_SIGNATURE) and len(content) > 10_000
    assert f"Wrote {output}" in capsys.readouterr().out
    assert [path.name for path in output.parent.iterdir() if path.name.startswith(".")] == []  # no temp files left


def test_cli_other_tags_smoothing_and_output(tmp_path):
    workspace = _simulator_workspace(tmp_path)
    target = tmp_path / "plots" / "losses.png"
    output = plot.main(["--workspace", str(workspace), "--tags", "train_loss", "--smoothing", "0", "--output", str(target)])
    assert output == target and target.read_bytes().startswith(PNG_SIGNATURE)


def test_cli_on_an_empty_folder_names_it(tmp_path):
    empty = tmp_path / "empty_ws"
    empty.mkdir()
    with pytest.raises(SystemExit) as exit_info:
        plot.main(["--workspace", str(empty)])
    message = str(exit_info.value.code)
    assert "no TensorBoard event files" in message and str(empty) in message
    assert not (empty / plot.DEFAULT_OUTPUT_NAME).exists()


def test_cli_on_a_missing_folder_and_unknown_tags(tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        plot.main(["--workspace", str(tmp_path / "nope")])
    assert str(tmp_path / "nope") in str(exit_info.value.code)
    workspace = _simulator_workspace(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        plot.main(["--workspace", str(workspace), "--tags", "no_such_tag"])
    message = str(exit_info.value.code)
    assert "no_such_tag" in message and "val_metric_global_model" in message


def test_cli_rejects_a_bad_smoothing_weight(tmp_path):
    with pytest.raises(SystemExit):
        plot.main(["--workspace", str(tmp_path), "--smoothing", "1.0"])


# --- several runs on one figure ---------------------------------------------------------------

def test_plot_runs_has_one_row_per_tag_one_column_per_site_one_line_per_run(tmp_path):
    _, ours = plot.read_workspace(_simulator_workspace(tmp_path / "a"), ["val_metric_global_model", "train_loss"])
    other = {"client_A": {"val_metric_global_model": (np.array([0, 1]), np.array([0.2, 0.4]))}}
    figure = plot.plot_runs({"ours": ours, "reference": other}, ["val_metric_global_model", "train_loss"], 0.0)
    axes = figure.get_axes()
    assert len(axes) == 2 * len(CURVES)  # 2 tags x 2 sites
    by_title = {axis.get_title(): axis for axis in axes}
    global_a = by_title["client_A: Global model: validation Dice"]
    # raw + smoothed line per run: ours and the reference both logged the global Dice at client_A
    assert len(global_a.get_lines()) == 4
    assert global_a.get_lines()[3].get_ydata().tolist() == pytest.approx([0.2, 0.4])
    assert len(by_title["client_B: Global model: validation Dice"].get_lines()) == 2  # ours only


def test_cli_runs_writes_one_comparison_png(tmp_path, capsys):
    first, second = _simulator_workspace(tmp_path / "a"), _simulator_workspace(tmp_path / "b")
    target = tmp_path / "compare.png"
    output = plot.main(["--runs", f"ours={first}", f"reference={second}", "--tags", "val_metric_global_model",
                        "--output", str(target)])
    assert output == target and target.read_bytes().startswith(PNG_SIGNATURE)
    assert f"Wrote {target}" in capsys.readouterr().out


def test_cli_runs_errors_name_the_run_or_the_setting(tmp_path):
    workspace = _simulator_workspace(tmp_path / "a")
    with pytest.raises(SystemExit):  # LABEL=WORKSPACE is required
        plot.main(["--runs", str(workspace), "--output", str(tmp_path / "x.png")])
    with pytest.raises(SystemExit):  # no --output
        plot.main(["--runs", f"ours={workspace}"])
    with pytest.raises(SystemExit):  # repeated label
        plot.main(["--runs", f"ours={workspace}", f"ours={workspace}", "--output", str(tmp_path / "x.png")])
    with pytest.raises(SystemExit) as exit_info:
        plot.main(["--runs", f"ours={workspace}", "--tags", "no_such_tag", "--output", str(tmp_path / "x.png")])
    assert "'ours'" in str(exit_info.value.code)
    with pytest.raises(SystemExit) as exit_info:
        plot.main(["--runs", f"ours={tmp_path / 'missing'}", "--output", str(tmp_path / "x.png")])
    assert str(tmp_path / "missing") in str(exit_info.value.code)
    assert not (tmp_path / "x.png").exists()
