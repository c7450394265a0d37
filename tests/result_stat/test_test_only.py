"""Test-only evaluation of the super model on a tiny fake run (configs, checkpoints, PNG dataset)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fedsm.core.dice import binarize, dice_per_image
from fedsm.core.super_model import GLOBAL_MODEL
from fedsm.data.loading import make_loader
from fedsm.io.checkpoint import best_checkpoint_name
from fedsm.io.checkpoint import load_checkpoint, save_checkpoint
from fedsm.models.networks import build_selector, build_unet
from fedsm.models.weights import get_weights, set_weights
from fedsm import evaluation
from result_stat import prostate_2d_test_only as test_only
from result_stat.workspace import find_server_app

REPO = Path(__file__).resolve().parents[2]
JOB_CONFIG = REPO / "jobs" / "fedsm_prostate" / "app" / "config"
LABELS = {"client_I2CVB": 0, "client_MSD": 1, "client_NCI_ISBI_3T": 2}
SIZE = 32
MASK_SIDES = {"client_I2CVB": (6, 10), "client_MSD": (8, 12, 14), "client_NCI_ISBI_3T": (4, 16)}
LAST_BIAS = "model.2.1.conv.unit0.conv.bias"  # bias of the UNet's output convolution


def _png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.astype(np.uint8)).save(path)


def _make_dataset(root: Path) -> tuple[Path, Path]:
    base, datalists = root / "dataset", root / "datalist"
    rng = np.random.default_rng(0)
    for site_index, (client, sides) in enumerate(MASK_SIDES.items()):
        testing = []
        for case, side in enumerate(sides):
            image = rng.integers(0, 60, (SIZE, SIZE)) + 60 * site_index
            mask = np.zeros((SIZE, SIZE), dtype=np.uint8)
            mask[3:3 + side, 5:5 + side] = 255
            image[mask > 0] += 40
            relative = f"{client}/case{case}"
            _png(base / relative / "img.png", image)
            _png(base / relative / "mask.png", mask)
            testing.append({"image": f"{relative}/img.png", "label": f"{relative}/mask.png"})
        datalists.mkdir(parents=True, exist_ok=True)
        (datalists / f"{client}.json").write_text(
            json.dumps({"training": [], "validation": [], "testing": testing}))
    return base, datalists


def _constant_unet(logit: float) -> torch.nn.Module:
    """A UNet whose output is (almost) the constant `logit`: all foreground (>0) or all background."""
    model = build_unet()
    weights = get_weights(model)
    weights[LAST_BIAS] = np.full_like(weights[LAST_BIAS], logit)
    set_weights(model, weights)
    return model


def _save(path: Path, model: torch.nn.Module) -> None:
    save_checkpoint(path, {"weights": get_weights(model), "metric": 0.5, "round": 1})


def _rig_selector(app: Path, label: int) -> None:
    """Replace the best selector by one that is (numerically) certain of `label` for every image."""
    selector = build_selector("light", len(LABELS))
    weights = get_weights(selector)
    weights["classifier.weight"] = np.zeros_like(weights["classifier.weight"])
    bias = np.zeros_like(weights["classifier.bias"])
    bias[label] = 50.0
    weights["classifier.bias"] = bias
    set_weights(selector, weights)
    _save(app / best_checkpoint_name("selector"), selector)


@pytest.fixture(scope="module")
def base_run(tmp_path_factory) -> Path:
    """A simulator-like workspace `<root>/ws` whose server app folder holds configs and best checkpoints.

    Global model: random UNet; personalized models: client_I2CVB all foreground, client_MSD all
    background, client_NCI_ISBI_3T random; selector: random light selector.
    """
    root = tmp_path_factory.mktemp("run")
    base, datalists = _make_dataset(root)
    app = root / "ws" / "server" / "simulate_job" / "app_server"
    (app / "config").mkdir(parents=True)
    for name in ("config_fed_server.json", "config_fed_client.json"):
        shutil.copy(JOB_CONFIG / name, app / "config" / name)
    train = json.loads((JOB_CONFIG / "config_train.json").read_text())
    train.update(image_size=SIZE, selector="light", dataset_base_dir=str(base), datalist_json_path=str(datalists))
    (app / "config" / "config_train.json").write_text(json.dumps(train))
    assert json.loads((app / "config" / "config_fed_server.json").read_text())["workflows"][0]["args"][
        "client_id_label_mapping"] == LABELS
    torch.manual_seed(1)
    _save(app / best_checkpoint_name("global"), build_unet())
    _save(app / best_checkpoint_name("selector"), build_selector("light", len(LABELS)))
    for client in LABELS:
        constant = {"client_I2CVB": 100.0, "client_MSD": -100.0}.get(client)
        model = build_unet() if constant is None else _constant_unet(constant)
        _save(app / best_checkpoint_name("personalized", client), model)
    return root


@pytest.fixture
def run_copy(base_run, tmp_path) -> Path:
    """A private copy of the fake run's server app folder (tests may change it)."""
    shutil.copytree(base_run / "ws", tmp_path / "ws")
    return tmp_path / "ws" / "server" / "simulate_job" / "app_server"


def _test_items(root: Path) -> list[dict[str, str]]:
    items = []
    for client in LABELS:
        listed = json.loads((root / "datalist" / f"{client}.json").read_text())["testing"]
        items += [{key: str(root / "dataset" / item[key]) for key in ("image", "label")} for item in listed]
    return items


def _direct_dice(checkpoint: Path, items) -> np.ndarray:
    """Per-image Dice of one checkpoint's UNet, computed without the script."""
    model = build_unet()
    set_weights(model, load_checkpoint(checkpoint)["weights"])
    model.eval()
    scores = []
    with torch.no_grad():
        for batch in make_loader(items, SIZE, batch_size=1, shuffle=False):
            scores.append(dice_per_image(binarize(model(batch["image"])), batch["label"]))
    return torch.cat(scores).numpy()


def _all_foreground_dice(side: int) -> float:
    foreground = side * side
    return 2 * foreground / (SIZE * SIZE + foreground)


def _run(tmp_path: Path, *args: str, json_name: str = "results.json") -> tuple[dict, str]:
    output = tmp_path / json_name
    results = test_only.main([*args, "--output_json", str(output)])
    assert json.loads(output.read_text()) == json.loads(json.dumps(results))
    return results, str(output)


def test_prints_a_table_and_test_dice_last(base_run, tmp_path, capsys):
    app = base_run / "ws" / "server" / "simulate_job" / "app_server"
    results, _ = _run(tmp_path, "--models_dir", str(app))
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1] == f"Test Dice: {results['test_dice']:.4f}"
    header = next(index for index, line in enumerate(lines) if line.startswith("site"))
    for client, sides in MASK_SIDES.items():
        row = next(line for line in lines[header:] if line.startswith(client))
        assert row.split()[1] == str(len(sides))
    pooled = next(line for line in lines if line.startswith("pooled"))
    assert pooled.split()[1:3] == ["7", f"{results['test_dice']:.4f}"]
    assert results["pooled"]["images"] == 7
    # the pooled value is the mean over images, not over sites
    site_sums = sum(results["sites"][c]["super_dice"] * results["sites"][c]["images"] for c in LABELS)
    assert results["test_dice"] == pytest.approx(site_sums / 7)


def test_figures_show_each_sites_first_test_slices_and_the_routing_is_stated(base_run, tmp_path, capsys):
    app = base_run / "ws" / "server" / "simulate_job" / "app_server"
    results = test_only.main(["--models_dir", str(app), "--figures_dir", str(tmp_path / "figures")])
    for client in LABELS:
        assert (tmp_path / "figures" / f"test_slices_{client}.png").read_bytes().startswith(b"\x89PNG")
    share = results["pooled"]["personalized_share"]
    assert (f"{share:.1%} of the test images were routed" if share else "the super model equals the global model") \
        in capsys.readouterr().out


def test_threshold_one_is_the_global_model_only(base_run, tmp_path):
    app = base_run / "ws" / "server" / "simulate_job" / "app_server"
    # even a selector that is certain of one site must not route anything at threshold 1.0
    shutil.copytree(base_run / "ws", tmp_path / "ws")
    rigged = tmp_path / "ws" / "server" / "simulate_job" / "app_server"
    _rig_selector(rigged, LABELS["client_MSD"])
    results, _ = _run(tmp_path, "--models_dir", str(rigged), "--select_threshold", "1.0")
    expected = _direct_dice(app / best_checkpoint_name("global"), _test_items(base_run))
    assert results["test_dice"] == pytest.approx(float(expected.mean()), abs=1e-6)
    assert results["pooled"]["global_dice"] == pytest.approx(float(expected.mean()), abs=1e-6)
    assert results["pooled"]["personalized_share"] == 0.0


@pytest.mark.parametrize("target", ["client_I2CVB", "client_MSD"])
def test_confident_selector_routes_to_that_sites_personalized_model(target, run_copy, base_run, tmp_path):
    _rig_selector(run_copy, LABELS[target])
    results, _ = _run(tmp_path, "--models_dir", str(run_copy), "--select_threshold", "0.9")
    for client, sides in MASK_SIDES.items():
        site = results["sites"][client]
        # client_I2CVB's personalized model predicts all foreground (Dice 2|T| / (H*W + |T|)),
        # client_MSD's all background (Dice 0 on these non-empty masks)
        expected = [_all_foreground_dice(side) if target == "client_I2CVB" else 0.0 for side in sides]
        assert site["super_dice"] == pytest.approx(float(np.mean(expected)), abs=1e-6)
        assert site["personalized_share"] == 1.0
        assert site["selector_accuracy"] == (1.0 if client == target else 0.0)
    items = _test_items(base_run)
    direct = _direct_dice(run_copy / best_checkpoint_name("personalized", target), items)
    assert results["test_dice"] == pytest.approx(float(direct.mean()), abs=1e-6)
    global_only = _direct_dice(run_copy / best_checkpoint_name("global"), items)
    assert results["pooled"]["global_dice"] == pytest.approx(float(global_only.mean()), abs=1e-6)
    assert results["pooled"]["selector_accuracy"] == pytest.approx(len(MASK_SIDES[target]) / 7)
    if target == "client_MSD":
        assert results["test_dice"] == 0.0 < results["pooled"]["global_dice"]


def test_trailing_slash_and_workspace_give_the_same_result(base_run, tmp_path):
    app = base_run / "ws" / "server" / "simulate_job" / "app_server"
    plain, _ = _run(tmp_path, "--models_dir", str(app), json_name="a.json")
    slash, _ = _run(tmp_path, "--models_dir", str(app) + "/", json_name="b.json")
    workspace, _ = _run(tmp_path, "--workspace", str(base_run / "ws"), json_name="c.json")
    assert plain["test_dice"] == slash["test_dice"] == workspace["test_dice"]
    assert workspace["models_dir"] == str(app)


def test_missing_global_checkpoint_names_the_file_and_lists_what_exists(run_copy):
    missing = run_copy / best_checkpoint_name("global")
    missing.unlink()
    with pytest.raises(SystemExit) as exit_info:
        test_only.main(["--models_dir", str(run_copy)])
    message = str(exit_info.value.code)
    assert str(missing) in message
    assert "best_selector_model.pt" in message and best_checkpoint_name("personalized", "client_I2CVB") in message


def test_a_site_without_best_personalized_model_falls_back_to_the_global_model(run_copy, tmp_path, caplog):
    """A client that left before its first validation has no best personalized checkpoint: images the
    selector routes to it are segmented by the global model, with a warning naming the file."""
    _rig_selector(run_copy, LABELS["client_MSD"])
    missing = run_copy / best_checkpoint_name("personalized", "client_MSD")
    missing.unlink()
    results, _ = _run(tmp_path, "--models_dir", str(run_copy), "--select_threshold", "0.5")
    assert str(missing) in caplog.text
    pooled = results["pooled"]
    assert pooled["personalized_share"] == 0.0
    assert results["test_dice"] == pytest.approx(pooled["global_dice"], abs=1e-9)


def test_checkpoint_of_another_architecture_is_a_clear_error(run_copy):
    selector = run_copy / best_checkpoint_name("selector")
    save_checkpoint(selector, {"weights": get_weights(build_selector("light", 5)), "metric": 0.0, "round": 0})
    with pytest.raises(SystemExit) as exit_info:
        test_only.main(["--models_dir", str(run_copy)])
    assert str(selector) in str(exit_info.value.code)


def test_a_client_without_test_images_is_reported(run_copy, base_run, tmp_path, capsys):
    datalists = tmp_path / "datalist"
    shutil.copytree(base_run / "datalist", datalists)
    empty = datalists / "client_NCI_ISBI_3T.json"
    empty.write_text(json.dumps({"training": [], "validation": [], "testing": []}))
    results, _ = _run(tmp_path, "--models_dir", str(run_copy), "--datalist_json_path", str(datalists))
    out = capsys.readouterr().out
    assert "(no test images)" in next(line for line in out.splitlines() if line.startswith("client_NCI_ISBI_3T"))
    assert results["sites"]["client_NCI_ISBI_3T"]["images"] == 0
    assert results["sites"]["client_NCI_ISBI_3T"]["super_dice"] is None
    assert results["pooled"]["images"] == 5
    assert out.strip().splitlines()[-1].startswith("Test Dice: ")


def _pooled_datalist(base_run: Path, path: Path) -> Path:
    """A reference-style `client_All.json`: every site's `testing` list in one file."""
    testing = [item for client in LABELS
               for item in json.loads((base_run / "datalist" / f"{client}.json").read_text())["testing"]]
    path.write_text(json.dumps({"training": [], "validation": [], "testing": testing}))
    return path


def test_a_datalist_file_is_evaluated_as_one_pooled_set(run_copy, base_run, tmp_path, capsys):
    """As in the reference, `--datalist_json_path` may name one datalist file (`client_All.json`): its
    `testing` images are one set, scored like the per-site folder's pooled row, with no selector accuracy
    since the file does not say which site an image comes from."""
    _rig_selector(run_copy, LABELS["client_I2CVB"])
    per_site, _ = _run(tmp_path, "--models_dir", str(run_copy), json_name="sites.json")
    capsys.readouterr()
    datalist = _pooled_datalist(base_run, tmp_path / "client_All.json")
    pooled, _ = _run(tmp_path, "--models_dir", str(run_copy), "--datalist_json_path", str(datalist))
    assert list(pooled["sites"]) == ["client_All"]
    assert pooled["datalist_json_path"] == str(datalist)
    for key in ("images", "super_dice", "global_dice", "personalized_share"):
        assert pooled["pooled"][key] == pytest.approx(per_site["pooled"][key], abs=1e-9), key
        assert pooled["sites"]["client_All"][key] == pytest.approx(per_site["pooled"][key], abs=1e-9), key
    assert pooled["pooled"]["personalized_share"] == 1.0
    assert per_site["pooled"]["selector_accuracy"] == pytest.approx(2 / 7)
    assert pooled["pooled"]["selector_accuracy"] is None
    lines = capsys.readouterr().out.strip().splitlines()
    assert next(line for line in lines if line.startswith("pooled")).split()[4] == "-"
    assert lines[-1] == f"Test Dice: {per_site['test_dice']:.4f}"


@pytest.mark.parametrize("case", ["missing", "not_json", "no_testing", "folder_without_a_site"])
def test_a_bad_datalist_path_is_an_error_naming_it(case, run_copy, base_run, tmp_path):
    if case == "missing":
        named = tmp_path / "nowhere" / "client_All.json"
        given = named
    elif case == "folder_without_a_site":
        given = tmp_path / "datalist"
        shutil.copytree(base_run / "datalist", given)
        named = given / "client_MSD.json"
        named.unlink()
    else:
        named = given = tmp_path / "client_All.json"
        given.write_text("{not json" if case == "not_json" else json.dumps({"training": []}))
    with pytest.raises(SystemExit) as exit_info:
        test_only.main(["--models_dir", str(run_copy), "--datalist_json_path", str(given)])
    message = str(exit_info.value.code)
    assert str(named) in message
    if case == "no_testing":
        assert "'testing'" in message


def test_runs_as_a_script_from_another_folder(base_run, tmp_path):
    app = base_run / "ws" / "server" / "simulate_job" / "app_server"
    completed = subprocess.run(
        [sys.executable, str(REPO / "result_stat" / "prostate_2d_test_only.py"), "--models_dir", f"{app}/",
         "--select_threshold", "1.0"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    last = completed.stdout.strip().splitlines()[-1]
    expected = _direct_dice(app / best_checkpoint_name("global"), _test_items(base_run)).mean()
    assert last == f"Test Dice: {expected:.4f}"


# --- pure helpers ---------------------------------------------------------------------------

def test_choose_routes_falls_back_to_global_for_labels_without_a_model():
    probabilities = np.array([[0.95, 0.05, 0.0], [0.02, 0.03, 0.95], [0.5, 0.3, 0.2], [0.0, 0.91, 0.09]])
    routes = evaluation.choose_routes(probabilities, 0.9, available=[0, 1])
    assert routes.tolist() == [0, GLOBAL_MODEL, GLOBAL_MODEL, 1]


def test_summarize_by_hand():
    results = evaluation.ImageResults(
        own_label=np.array([1, 1, 1, 1]),
        top=np.array([1, 0, 1, 1]),
        confidence=np.array([0.95, 0.5, 0.6, 0.99]),
        route=np.array([1, GLOBAL_MODEL, GLOBAL_MODEL, 1]),
        super_dice=np.array([0.8, 0.4, 0.6, 1.0]),
        global_dice=np.array([0.5, 0.4, 0.6, 0.7]),
    )
    summary = evaluation.summarize("s", results)
    assert summary.images == 4
    assert summary.super_dice == pytest.approx(0.7)
    assert summary.global_dice == pytest.approx(0.55)
    assert summary.selector_accuracy == pytest.approx(0.75)
    assert summary.personalized_share == pytest.approx(0.5)
    empty = evaluation.summarize("e", evaluation.ImageResults.empty())
    assert empty.images == 0 and np.isnan(empty.super_dice)
    assert empty.as_json()["super_dice"] is None


def test_summarize_leaves_selector_accuracy_out_for_images_of_unknown_site():
    results = evaluation.ImageResults(
        own_label=np.array([evaluation.UNKNOWN_SITE, 0, 0]),
        top=np.array([1, 0, 1]),
        confidence=np.array([0.95, 0.95, 0.5]),
        route=np.array([1, 0, GLOBAL_MODEL]),
        super_dice=np.array([0.9, 0.6, 0.3]),
        global_dice=np.array([0.3, 0.3, 0.3]),
    )
    assert evaluation.summarize("s", results).selector_accuracy == pytest.approx(0.5)
    unknown = evaluation.ImageResults(**{**vars(results), "own_label": np.full(3, evaluation.UNKNOWN_SITE)})
    summary = evaluation.summarize("u", unknown)
    assert np.isnan(summary.selector_accuracy) and summary.as_json()["selector_accuracy"] is None
    assert summary.super_dice == pytest.approx(0.6) and summary.personalized_share == pytest.approx(2 / 3)
    row = next(line for line in evaluation.format_table([], summary).splitlines() if line.startswith("u"))
    assert row.split()[4] == "-"


def test_evaluate_batch_uses_the_routed_models():
    images = torch.rand(3, 1, 16, 16)
    targets = torch.zeros(3, 1, 16, 16)
    targets[:, :, 4:8, 4:8] = 1.0

    class FixedSelector(torch.nn.Module):
        def forward(self, x):
            return torch.tensor([[10.0, 0.0], [0.0, 10.0], [0.0, 0.0]])

    class Constant(torch.nn.Module):
        def __init__(self, logit):
            super().__init__()
            self.logit = logit

        def forward(self, x):
            return torch.full_like(x, self.logit)

    model = evaluation.SuperModel(FixedSelector(), Constant(-5.0), {0: Constant(5.0), 1: Constant(-5.0)})
    result = evaluation.evaluate_batch(images, targets, 0, model, threshold=0.9)
    assert result.route.tolist() == [0, 1, GLOBAL_MODEL]
    assert result.top.tolist() == [0, 1, 0]
    full = 2 * 16 / (256 + 16)
    assert result.super_dice.tolist() == pytest.approx([full, 0.0, 0.0])
    assert result.global_dice.tolist() == [0.0, 0.0, 0.0]


def test_find_server_app_layouts(tmp_path):
    app = tmp_path / "ws" / "server" / "simulate_job" / "app_server"
    (app / "config").mkdir(parents=True)
    (app / "config" / "config_fed_server.json").write_text("{}")
    assert find_server_app(tmp_path / "ws") == app
    assert find_server_app(app) == app
    assert find_server_app(f"{app}/") == app
    download = tmp_path / "download" / "job-1" / "workspace" / "app_server"
    shutil.copytree(app, download)
    assert find_server_app(tmp_path / "download") == download
    with pytest.raises(FileNotFoundError, match="no server app folder"):
        find_server_app(tmp_path / "download" / "job-1" / "workspace" / "app_server" / "config")
    with pytest.raises(FileNotFoundError, match="several server app folders"):
        find_server_app(tmp_path)


def test_summarize_leaves_empty_mask_images_out_of_the_dice_means():
    results = evaluation.ImageResults(
        own_label=np.array([0, 0, 0]), top=np.array([0, 0, 0]), confidence=np.array([0.95, 0.95, 0.95]),
        route=np.array([0, 0, GLOBAL_MODEL]),
        super_dice=np.array([0.8, np.nan, 0.6]), global_dice=np.array([0.5, np.nan, 0.6]),
    )
    summary = evaluation.summarize("s", results)
    assert summary.images == 3
    assert summary.super_dice == pytest.approx(0.7) and summary.global_dice == pytest.approx(0.55)
    only_empty = evaluation.ImageResults(**{**vars(results), "super_dice": np.full(3, np.nan),
                                           "global_dice": np.full(3, np.nan)})
    assert np.isnan(evaluation.summarize("e", only_empty).super_dice)
