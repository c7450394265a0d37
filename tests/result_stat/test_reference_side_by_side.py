"""tools/reference_side_by_side.py: the run-time patches of NVFlare's research/fed-sm job, on a small fake
reference tree holding only the lines the patches replace, and the log and table helpers. No simulator."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TOOLS = REPO / "tools"
LABELS = {"client_A": 0, "client_B": 1}
LEARNER = "app/custom/learners/supervised_monai_prostate_learner.py"
AGGREGATOR = "app/custom/aggregators/accumulate_model_aggregator_fedsm.py"
FAKE_FILES = {
    "meta.json": '{"name": "fedsm_prostate"}\n',
    "app/config/config_train.json": '{\n  "learning_rate": 1e-3,\n  "dataset_base_dir": "DATASET_ROOT/dataset_2D",\n'
                                    '  "datalist_json_path": "DATASET_ROOT/datalist_2D"\n}\n',
    "app/config/config_fed_server.json": json.dumps({"min_clients": 2, "num_rounds": 100, "workflows": [
        {"id": "scatter_and_gather", "args": {"client_id_label_mapping": LABELS, "num_rounds": "{num_rounds}"}}]},
        indent=2) + "\n",
    LEARNER: "transform = Resized(\n    keys=keys,\n    spatial_size=(256, 256),\n    mode='bilinear',\n)\n",
    AGGREGATOR: "if n_local_iters:\n    new_val = np.sum(np_vars, axis=0) / np.sum(n_local_iters)\n",
}


@pytest.fixture(scope="module")
def tool():
    """The tool as a module; like the script it imports its sibling tools/benchmark.py."""
    sys.path.insert(0, str(TOOLS))
    try:
        spec = importlib.util.spec_from_file_location("reference_side_by_side", TOOLS / "reference_side_by_side.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(TOOLS))
    return module


def _fake_checkout(root: Path) -> Path:
    job = root / "research" / "fed-sm" / "jobs" / "fedsm_prostate"
    for relative, text in FAKE_FILES.items():
        (job / relative).parent.mkdir(parents=True, exist_ok=True)
        (job / relative).write_text(text)
    return job


def test_patches_change_paths_rounds_resize_and_the_average_in_a_copy(tool, tmp_path):
    source = _fake_checkout(tmp_path / "NVFlare")
    data = tmp_path / "data with space"
    copy = tool.copy_patched_reference(tmp_path / "NVFlare", tmp_path / "work" / "reference_job",
                                       tool.reference_patches(data, rounds=3, image_size=32))
    train = json.loads((copy / "app/config/config_train.json").read_text())
    assert train == {"learning_rate": 1e-3, "dataset_base_dir": str(data / "dataset_2D"),
                     "datalist_json_path": str(data / "datalist_2D")}
    assert json.loads((copy / "app/config/config_fed_server.json").read_text())["num_rounds"] == 3
    assert "spatial_size=(32, 32)," in (copy / LEARNER).read_text()
    assert "/ float(np.sum(n_local_iters))" in (copy / AGGREGATOR).read_text()
    assert tool.client_labels(copy) == LABELS
    for relative, text in FAKE_FILES.items():  # the checkout itself is never changed
        assert (source / relative).read_text() == text


def test_the_research_folder_is_a_reference_too(tool, tmp_path):
    job = _fake_checkout(tmp_path / "NVFlare")
    assert tool.reference_job_folder(tmp_path / "NVFlare" / "research" / "fed-sm") == job
    with pytest.raises(FileNotFoundError, match="no job folder with a meta.json"):
        tool.reference_job_folder(tmp_path)


@pytest.mark.parametrize("edit, found", [(lambda text: text.replace("(256, 256)", "(224, 224)"), 0),
                                         (lambda text: text + text, 2)])
def test_a_patch_target_not_there_exactly_once_names_the_file_and_the_patch(tool, tmp_path, edit, found):
    job = _fake_checkout(tmp_path / "NVFlare")
    learner = job / LEARNER
    learner.write_text(edit(learner.read_text()))
    with pytest.raises(tool.PatchError, match=rf"supervised_monai_prostate_learner\.py: patch 'resize' .* found it "
                                              rf"{found} times"):
        tool.copy_patched_reference(tmp_path / "NVFlare", tmp_path / "copy", tool.reference_patches(tmp_path, 3, 32))


def test_a_missing_patched_file_is_named(tool, tmp_path):
    job = _fake_checkout(tmp_path / "NVFlare")
    (job / AGGREGATOR).unlink()
    with pytest.raises(tool.PatchError, match=r"accumulate_model_aggregator_fedsm\.py: not found; patch 'float32 "
                                              r"average'"):
        tool.copy_patched_reference(tmp_path / "NVFlare", tmp_path / "copy", tool.reference_patches(tmp_path, 3, 32))


def test_revision_is_the_commit_and_says_when_the_job_was_changed(tool, tmp_path):
    root = tmp_path / "NVFlare"
    job = _fake_checkout(root)
    assert tool.reference_revision(root).startswith("unknown")
    git = ["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "fake"], check=True)
    commit = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()
    assert tool.reference_revision(root) == commit
    (job / "meta.json").write_text("{}\n")
    assert tool.reference_revision(root) == f"{commit} with uncommitted changes to its job folder"


def test_round_seconds_read_both_sides_server_lines(tool):
    log = "\n".join([
        "2026-12-06 10:00:00,000 - ScatterAndGatherFedSM - INFO - Round 0 started.",
        "2026-12-06 10:00:05,000 - Learner - INFO - Current/Total Round: 1/2",
        "2026-12-06 10:01:30,500 - ScatterAndGatherFedSM - INFO - Round 0 finished.",
        "2026-12-06 10:01:31,000 - INFO - Round 1 of 2 started (3 clients).",
        "2026-12-06 10:02:01,000 - INFO - Round 1 finished in 30.0 s; aggregated ['client_A'].",
        "Round 2 started without a time stamp",
    ])
    assert tool.round_seconds(log) == {0: 90.5, 1: 30.0}


def test_table_gives_mean_and_range_over_runs_and_a_dash_where_a_side_has_no_value(tool):
    rows = tool.dice_rows({"reference": [{"client_A": {0: 0.1, 1: 0.5}}, {"client_A": {0: 0.3, 1: 0.7}}],
                           "this job": [{"client_A": {0: 0.2, 1: 0.6, 2: 0.8}}]})
    table = tool.rows_markdown(rows, ["client_A"], ["reference", "this job"]).splitlines()
    assert table[2:] == ["| 0 | 0.200 (0.100-0.300) | 0.200 |", "| 1 | 0.600 (0.500-0.700) | 0.600 |",
                         "| 2 | - | 0.800 |"]
    assert tool.rows_csv(rows).splitlines()[:2] == ["round,client,side,runs,mean,low,high",
                                                    "0,client_A,reference,2,0.2000,0.1000,0.3000"]


def test_a_side_without_a_finished_run_gives_dashes_not_an_error(tool):
    """The report is rewritten after every run, so after the first one a side has no runs yet."""
    rows = tool.dice_rows({"reference": [{"client_A": {0: 0.1}}], "this job": []})
    table = tool.rows_markdown(rows, ["client_A"], ["reference", "this job"]).splitlines()
    assert table[2:] == ["| 0 | 0.100 | - |"]


def test_resume_keeps_a_finished_run_of_the_same_command_only(tool, tmp_path):
    def run(command):
        return tool.Run("reference", "reference", tmp_path / "workspace", tmp_path / "simulator.log", command)

    finished = run(["nvflare", "simulator", "job"])
    finished.wall_s, finished.peak_rss, finished.rounds_s = 12.5, 3 * 2**30, {0: 6.0, 1: 6.5}
    finished.save_record()
    kept = run(["nvflare", "simulator", "job"])
    assert kept.load_record(rounds=2)
    assert (kept.wall_s, kept.peak_rss, kept.rounds_s) == (12.5, 3 * 2**30, {0: 6.0, 1: 6.5})
    assert not run(["nvflare", "simulator", "other_job"]).load_record(rounds=2)
    assert not run(["nvflare", "simulator", "job"]).load_record(rounds=3)  # it finished fewer rounds than asked
    (tmp_path / "simulator.log").with_name("run.json").write_text("{")
    assert not run(["nvflare", "simulator", "job"]).load_record(rounds=2)


def test_a_run_that_failed_early_counts_where_it_logged_and_is_kept_on_resume(tool, tmp_path):
    rows = tool.dice_rows({"reference": [{"client_A": {0: 0.1, 1: 0.5}}, {"client_A": {0: 0.3}}], "this job": []})
    table = tool.rows_markdown(rows, ["client_A"], ["reference", "this job"]).splitlines()
    assert table[2:] == ["| 0 | 0.200 (0.100-0.300) | - |", "| 1 | 0.500 [1 of 2 runs] | - |"]
    failed = tool.Run("reference", "reference run 2", tmp_path / "ws", tmp_path / "simulator.log", ["nvflare"],
                      wall_s=9.0, peak_rss=2**30, rounds_s={0: 9.0}, failure="simulator exit code 247")
    failed.save_record()
    kept = tool.Run("reference", "reference run 2", tmp_path / "ws", tmp_path / "simulator.log", ["nvflare"])
    assert kept.load_record(rounds=10) and kept.failure == "simulator exit code 247"
    assert "FAILED: simulator exit code 247" in tool.timing_markdown([kept])
