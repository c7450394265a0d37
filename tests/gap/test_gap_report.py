"""The gap report on a tiny study: every table and plot, and numbers equal to a direct computation."""

import json
import re

import numpy as np
import pytest
import torch

from fedsm.core.dice import binarize, dice_per_image
from fedsm.data.datalist import SPLITS, load_datalist
from fedsm.data.loading import make_loader
from fedsm.io.checkpoint import load_checkpoint
from fedsm.models.networks import build_selector, build_unet
from fedsm.models.weights import set_weights
from gap_study_fixtures import CLIENTS, SIZE, UNSEEN, read_csv, read_results, tiny_study
from result_stat import prostate_2d_test_only

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TOLERANCE = 2e-6  # the CSVs hold 6 decimals


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    return tiny_study(tmp_path_factory)


@pytest.fixture(scope="module")
def dice_table(study):
    return {(row["method"], row["site"]): row for row in read_csv(study.report / "dice_table.csv")}


def _items(study, client):
    splits = SPLITS if client == UNSEEN else ("testing",)
    lists = load_datalist(study.data / "datalist_2D" / f"{client}.json", study.data / "dataset_2D", splits)
    return [pair for split in splits for pair in lists[split]]


def _images(study, client):
    for batch in make_loader(_items(study, client), SIZE, 1, shuffle=False):
        yield batch["image"], batch["label"]


def _unet(weights):
    model = build_unet()
    set_weights(model, weights)
    return model.eval()


@torch.no_grad()
def _direct_dice(model, study, client):
    return [dice_per_image(binarize(model(image)), label).item() for image, label in _images(study, client)]


def _check(dice_table, method, per_site: dict[str, list[float]]):
    for site, values in per_site.items():
        row = dice_table[(method, site)]
        assert int(row["images"]) == len(values), (method, site)
        assert float(row["test_dice"]) == pytest.approx(np.mean(values), abs=TOLERANCE), (method, site)
    pooled = [value for site in CLIENTS for value in per_site[site]]
    assert float(dice_table[(method, "pooled")]["test_dice"]) == pytest.approx(np.mean(pooled), abs=TOLERANCE)


def test_report_writes_every_table_and_plot_with_configs_and_seeds(study):
    for name in ("report.md", "dice_table.csv", "dice_summary.csv", "paired_comparisons.csv", "threshold_sweep.csv",
                 "confusion_matrix.csv", "routing.csv", "selector_rounds.csv", "results.json"):
        assert (study.report / name).stat().st_size > 0, name
    for name in ("dice_per_site.png", "threshold_curve.png", "confusion_matrix.png", "selector_accuracy.png"):
        assert (study.report / name).read_bytes()[:8] == PNG_MAGIC, name
    assert not list(study.report.glob(".*.tmp"))
    report = (study.report / "report.md").read_text()
    for heading in ("## Test Dice per site", "## FedSM: routing at threshold 0.9", "## Selector confusion matrix",
                    "## Threshold sweep", "## Selector training per round", "## Runs, configs and seeds"):
        assert heading in report, heading
    assert "UNSEEN (unseen)" in report and "Warning" not in report
    routed = report.split("## FedSM: routing at threshold 0.9")[1].split("## ")[0]
    assert ("Training sites pooled: No test image was routed" in routed
            or re.search(r"Training sites pooled: \d+\.\d% of the test images were routed", routed)), routed
    results = read_results(study)
    names = [method["name"] for method in results["methods"]]
    assert names == ["local", "FedAvg", "centralized", "FedSM global only", "FedSM super model",
                     "FedSM super model, routed by validation", "FedSM[copy] global only", "FedSM[copy] super model",
                     "FedSM[copy] super model, routed by validation"]
    for method in results["methods"]:
        assert method["seed"] == 0 and method["config"]["image_size"] == SIZE and method["config"]["num_rounds"] == 2
    assert results["unseen_sites"] == [UNSEEN] and results["verdict"] in report
    rounds = read_csv(study.report / "selector_rounds.csv")
    assert {int(row["round"]) for row in rounds if row["run"] == "FedSM"} == {0, 1, 2}


def test_baseline_dice_equals_a_direct_computation_on_the_same_checkpoints(study, dice_table):
    cross_val = json.loads((study.fedavg_app.parent / "cross_site_val" / "cross_val_results.json").read_text())
    scores = {}
    for name in ("FL_global_model.pt", "best_FL_global_model.pt"):
        entries = [metrics[f"SRV_{name}"] for metrics in cross_val.values()]
        scores[name] = sum(e["val_dice"] * e["num_val"] for e in entries) / sum(e["num_val"] for e in entries)
    chosen = "FL_global_model.pt" if scores["FL_global_model.pt"] > scores["best_FL_global_model.pt"] \
        else "best_FL_global_model.pt"
    assert read_results(study)["methods"][1]["config"]["checkpoint"] == chosen
    fedavg = build_unet().eval()
    fedavg.load_state_dict(torch.load(study.fedavg_app / chosen, weights_only=True)["model"])
    centralized = _unet(load_checkpoint(study.centralized / "best_model.pt")["weights"])
    _check(dice_table, "FedAvg", {site: _direct_dice(fedavg, study, site) for site in [*CLIENTS, UNSEEN]})
    _check(dice_table, "centralized", {site: _direct_dice(centralized, study, site) for site in [*CLIENTS, UNSEEN]})
    local = {site: _direct_dice(_unet(load_checkpoint(study.local / site / "best_model.pt")["weights"]), study, site)
             for site in CLIENTS}
    _check(dice_table, "local", local)
    assert dice_table[("local", UNSEEN)]["test_dice"] == "-"


@pytest.mark.parametrize("threshold", [0.9, 1.0, 0.0])
def test_fedsm_numbers_equal_the_test_only_evaluation(study, dice_table, threshold):
    direct = prostate_2d_test_only.main(["--workspace", str(study.fedsm_ws), "--select_threshold", str(threshold)])
    sweep = {(row["run"], float(row["threshold"]), row["site"]): row
             for row in read_csv(study.report / "threshold_sweep.csv")}
    routing = {row["site"]: row for row in read_csv(study.report / "routing.csv") if row["run"] == "FedSM"}
    for site in [*CLIENTS, "pooled"]:
        expected = direct["pooled"] if site == "pooled" else direct["sites"][site]
        row = sweep[("FedSM", threshold, site)]
        assert int(row["images"]) == expected["images"]
        assert float(row["super_dice"]) == pytest.approx(expected["super_dice"], abs=TOLERANCE)
        assert float(row["personalized_share"]) == pytest.approx(expected["personalized_share"], abs=TOLERANCE)
        assert sweep[("FedSM[copy]", threshold, site)]["super_dice"] == row["super_dice"]
        if threshold == 0.9:
            assert float(dice_table[("FedSM super model", site)]["test_dice"]) == pytest.approx(
                expected["super_dice"], abs=TOLERANCE)
            assert float(dice_table[("FedSM global only", site)]["test_dice"]) == pytest.approx(
                expected["global_dice"], abs=TOLERANCE)
            if site != "pooled":
                assert float(routing[site]["selector_accuracy"]) == pytest.approx(expected["selector_accuracy"])
                assert 1 - float(routing[site]["share_global"]) == pytest.approx(expected["personalized_share"])


@torch.no_grad()
def test_selector_confusion_and_unseen_routing_equal_a_direct_computation(study, dice_table):
    app = study.fedsm_app
    selector = build_selector("light", 3)
    set_weights(selector, load_checkpoint(app / "best_selector_model.pt")["weights"])
    global_model = _unet(load_checkpoint(app / "best_global_model.pt")["weights"])
    personalized = [_unet(load_checkpoint(app / f"best_personalized_model_{c}.pt")["weights"]) for c in CLIENTS]
    confusion = {row["true_site"]: row for row in read_csv(study.report / "confusion_matrix.csv")
                 if row["run"] == "FedSM"}
    for site in [*CLIENTS, UNSEEN]:
        counts = np.zeros(3, dtype=int)
        routes, dices = [], []
        for image, label in _images(study, site):
            probabilities = torch.softmax(selector(image), dim=1)[0]
            top = int(probabilities.argmax())
            counts[top] += 1
            route = top if probabilities[top].item() > 0.9 else -1
            model = global_model if route == -1 else personalized[route]
            routes.append(route)
            dices.append(dice_per_image(binarize(model(image)), label).item())
        assert [int(confusion[site][f"predicted_{c}"]) for c in CLIENTS] == counts.tolist(), site
        if site == UNSEEN:
            row = next(r for r in read_csv(study.report / "routing.csv") if r["run"] == "FedSM" and r["site"] == site)
            assert int(row["images"]) == len(routes) == len(_items(study, UNSEEN))
            assert float(row["share_global"]) == pytest.approx(np.mean(np.array(routes) == -1), abs=TOLERANCE)
            for label, client in enumerate(CLIENTS):
                assert float(row[f"share_{client}"]) == pytest.approx(np.mean(np.array(routes) == label), abs=TOLERANCE)
            assert float(dice_table[("FedSM super model", UNSEEN)]["test_dice"]) == pytest.approx(
                np.mean(dices), abs=TOLERANCE)


def test_the_routed_row_equals_test_only_routed_by_validation(study, dice_table):
    direct = prostate_2d_test_only.main(["--workspace", str(study.fedsm_ws), "--route_by_validation", "0"])
    for site in [*CLIENTS, "pooled"]:
        expected = direct["pooled"] if site == "pooled" else direct["sites"][site]
        assert float(dice_table[("FedSM super model, routed by validation", site)]["test_dice"]) == pytest.approx(
            expected["super_dice"], abs=TOLERANCE)
    routed = read_results(study)["route_by_validation"]
    assert routed["runs"]["FedSM"]["personalized_sites"] == direct["route_by_validation"]["personalized_sites"]
    pairs = [(c["method"], c["other"]) for c in read_results(study)["paired_comparisons"]]
    assert ("FedSM super model, routed by validation", "FedSM global only") in pairs
    copy = next(c for c in read_results(study)["paired_comparisons"]
                if (c["method"], c["other"]) == ("FedSM[copy] super model", "FedSM super model"))
    assert copy["difference"] == pytest.approx(0.0, abs=1e-12)  # the variant is the same run


def test_two_seeds_give_means_spreads_and_paired_intervals(study):
    one = {(c["method"], c["other"]): c for c in read_results(study)["paired_comparisons"]}
    results = json.loads((study.seeds_report / "results.json").read_text())
    assert results["seeds"] == 2
    comparisons = {(c["method"], c["other"]): c for c in results["paired_comparisons"]}
    assert list(comparisons) == [("FedSM super model", "FedAvg"), ("FedSM super model", "centralized"),
                                 ("FedSM super model", "FedSM global only")]
    for pair, comparison in comparisons.items():  # the same run twice: no spread over seeds
        assert comparison["seeds"] == 2
        assert comparison["difference"] == pytest.approx(one[pair]["difference"], abs=1e-12)
        assert comparison["t_low"] == pytest.approx(comparison["difference"], abs=1e-12)
        assert comparison["bootstrap_low"] == pytest.approx(one[pair]["bootstrap_low"], abs=1e-12)
    summary = read_csv(study.seeds_report / "dice_summary.csv")
    assert {row["seeds"] for row in summary} == {"2"} and {float(row["std_over_seeds"]) for row in summary
                                                           if row["std_over_seeds"] != "-"} == {0.0}
    assert len(read_csv(study.seeds_report / "dice_table.csv")) == 2 * len(summary)
    report = (study.seeds_report / "report.md").read_text()
    assert "## Paired comparisons (pooled test Dice)" in report and "± 0.0000" in report
    mode = next(m for m in results["methods"] if m["name"] == "FedSM super model")["config"]["selector_training"]
    assert results["evidence"][0].startswith(f"FedSM ({mode}): ") and "over 2 seeds" in results["evidence"][0]
