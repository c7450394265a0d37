"""The report's math on per-image results: threshold re-routing, pooling, checkpoint choice, verdict."""

import json
import math

import numpy as np
import pytest
import torch
from matplotlib.container import BarContainer
from torch import nn

from fedsm.core.super_model import GLOBAL_MODEL
from result_stat import gap_evaluation, gap_format, gap_plots, gap_report, gap_routing, gap_stats, gap_verdict
from result_stat.baselines import num_rounds_of
from fedsm.evaluation import ImageResults, SuperModel, evaluate_batch
from result_stat.prostate_2d_test_only import trusted_sites


class FixedLogits(nn.Module):
    """A 'selector' returning preset logits for the images of a batch (indexed by their first pixel)."""

    def __init__(self, logits: np.ndarray):
        super().__init__()
        self.logits = torch.as_tensor(logits, dtype=torch.float32)

    def forward(self, images):
        return self.logits[images[:, 0, 0, 0].long()]


class Stripe(nn.Module):
    """A 'segmentation model' predicting foreground in rows [start, stop) of every image."""

    def __init__(self, start: int, stop: int):
        super().__init__()
        self.start, self.stop = start, stop

    def forward(self, images):
        logits = torch.full_like(images, -5.0)
        logits[:, :, self.start:self.stop] = 5.0
        return logits


def _batch(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    images = torch.zeros(n, 1, 8, 8)
    images[:, 0, 0, 0] = torch.arange(n, dtype=torch.float32)  # the selector's index
    targets = torch.zeros(n, 1, 8, 8)
    for i in range(n):
        start = int(rng.integers(0, 6))
        targets[i, :, start:start + 3] = 1.0
    return images, targets


def test_rerouting_results_of_threshold_zero_equals_evaluating_at_each_threshold():
    n = 40
    rng = np.random.default_rng(3)
    logits = rng.normal(0, 2.5, (n, 3))
    logits[:5] = [[0.0, 0.0, 0.0]] * 5  # exact ties at 1/3
    logits[5] = [np.log(9.0), 0.0, -np.inf]  # top probability exactly 0.9
    images, targets = _batch(n)
    selector = FixedLogits(logits)
    global_model = Stripe(2, 5)
    personalized = {0: Stripe(0, 3), 1: Stripe(3, 6), 2: Stripe(5, 8)}
    model = SuperModel(selector, global_model, personalized)
    at_zero = evaluate_batch(images, targets, 0, model, 0.0)
    probabilities = torch.softmax(selector(images), dim=1).numpy()
    for threshold in sorted({0.0, 1 / 3, 0.5, 0.7, 0.9, 0.95, 1.0, *probabilities.max(axis=1).tolist()}):
        direct = evaluate_batch(images, targets, 0, model, threshold)
        rerouted = gap_routing.at_threshold(at_zero, threshold, [0, 1, 2])
        np.testing.assert_array_equal(rerouted.route, direct.route, err_msg=f"threshold {threshold}")
        np.testing.assert_allclose(rerouted.super_dice, direct.super_dice, rtol=0, atol=1e-12)
        np.testing.assert_array_equal(rerouted.global_dice, direct.global_dice)


def test_rerouting_sends_labels_without_personalized_model_to_the_global_model():
    results = ImageResults(own_label=np.zeros(3, np.int64), top=np.array([0, 2, 1]), confidence=np.array([.95, .99, .5]),
                           route=np.array([0, 2, 1]), super_dice=np.array([.9, .8, .7]), global_dice=np.array([.1, .2, .3]))
    routed = gap_routing.at_threshold(results, 0.9, available=[0, 1])
    assert routed.route.tolist() == [0, GLOBAL_MODEL, GLOBAL_MODEL]
    assert routed.super_dice.tolist() == [.9, .2, .3]
    assert gap_routing.routing_shares(routed, [0, 1]) == {"global": 2 / 3, "0": 1 / 3, "1": 0.0}


def test_confusion_counts_rows_are_sites_columns_are_top_labels():
    results = {"s0": ImageResults(*(np.array(v) for v in ([0, 0, 0], [0, 1, 0], [.9] * 3, [0] * 3, [1.] * 3, [1.] * 3))),
               "new": ImageResults(*(np.array(v) for v in ([-1, -1], [2, 2], [.5] * 2, [-1] * 2, [1.] * 2, [1.] * 2)))}
    assert gap_routing.confusion_counts(results, 3) == {"s0": [2, 1, 0], "new": [0, 0, 2]}


def _results(top, confidence, super_dice, global_dice, own_label):
    top = np.array(top)
    return ImageResults(own_label=np.full(top.size, own_label), top=top, confidence=np.array(confidence),
                        route=top.copy(), super_dice=np.array(super_dice), global_dice=np.array(global_dice))


def test_sweep_and_routing_rows_pool_the_training_sites_only():
    sites = gap_routing.Sites({"client_A": 0, "client_B": 1}, ["client_NEW"])
    per_site = {"client_A": _results([0, 1], [0.95, 0.5], [0.9, 0.8], [0.4, 0.6], 0),
                "client_B": _results([1], [0.99], [0.7], [0.2], 1),
                "client_NEW": _results([0, 0], [0.99, 0.99], [0.1, 0.1], [0.3, 0.3], -1)}
    assert sites.columns == ["client_A", "client_B", "pooled", "client_NEW"]
    rows = {(row["threshold"], row["site"]): row for row in gap_routing.sweep_rows("R", per_site, [0.0, 0.9], sites)}
    assert [row["site"] for row in gap_routing.sweep_rows("R", per_site, [0.9], sites)] == sites.columns
    assert rows[(0.0, "pooled")]["super_dice"] == pytest.approx((0.9 + 0.8 + 0.7) / 3)
    assert rows[(0.9, "pooled")]["super_dice"] == pytest.approx((0.9 + 0.6 + 0.7) / 3)  # 0.5 goes global
    assert rows[(0.9, "pooled")]["personalized_share"] == pytest.approx(2 / 3)
    assert rows[(0.9, "client_NEW")]["unseen"] and not rows[(0.9, "pooled")]["unseen"]
    routing = gap_routing.routing_rows(per_site, 0.9, sites)
    assert routing["client_A"] == {"images": 2, "global": 0.5, "0": 0.5, "1": 0.0, "selector_accuracy": 0.5,
                                   "mean_top_probability": pytest.approx(0.725), "super_dice": pytest.approx(0.75),
                                   "global_dice": pytest.approx(0.5)}
    assert math.isnan(routing["client_NEW"]["selector_accuracy"])  # no selector class of its own
    assert routing["client_NEW"]["0"] == 1.0 and routing["client_NEW"]["super_dice"] == pytest.approx(0.1)


def _cross_val(final: float, best: float) -> dict:
    return {"c1": {"SRV_FL_global_model.pt": {"val_dice": final, "num_val": 3},
                   "SRV_best_FL_global_model.pt": {"val_dice": best, "num_val": 3}},
            "c2": {"SRV_FL_global_model.pt": {"val_dice": 0.5, "num_val": 1},
                   "SRV_best_FL_global_model.pt": {"val_dice": 0.5, "num_val": 1}}}


def test_fedavg_checkpoint_is_the_better_validated_one_with_ties_to_the_best():
    best, final = gap_evaluation.FEDAVG_BEST, gap_evaluation.FEDAVG_FINAL
    choose = gap_evaluation.choose_fedavg_checkpoint
    both = [best, final]
    chosen, scores = choose(_cross_val(final=0.7, best=0.6), both)
    assert chosen == final
    assert scores[final] == pytest.approx((3 * 0.7 + 0.5) / 4)
    assert choose(_cross_val(final=0.6, best=0.7), both)[0] == best
    assert choose(_cross_val(final=0.6, best=0.6), both)[0] == best
    assert choose(None, both) == (best, {})
    assert choose(None, [final])[0] == final
    with pytest.raises(FileNotFoundError):
        choose(None, [])


def test_gap_verdict_says_whether_and_how_much_of_the_gap_closed():
    text, closed = gap_verdict.gap_verdict(0.5, 0.6, 0.8, 0.85)
    assert "is closed" in text and closed == pytest.approx(1.25)
    text, closed = gap_verdict.gap_verdict(0.5, 0.6, 0.8, 0.7)
    assert "partly closed (50% of it)" in text and closed == pytest.approx(0.5)
    text, closed = gap_verdict.gap_verdict(0.5, 0.6, 0.8, 0.55)
    assert "not closed" in text and closed < 0
    assert "not closed" in gap_verdict.gap_verdict(0.5, 0.6, 0.8, 0.6 + 1e-12)[0]
    text, closed = gap_verdict.gap_verdict(0.5, 0.8, 0.7, 0.75)
    assert text.startswith("No generalization gap") and math.isnan(closed)
    assert gap_verdict.gap_verdict(0.5, math.nan, 0.7, 0.75)[0].startswith("The gap cannot be assessed")
    text, _ = gap_verdict.gap_verdict(0.5, 0.6, 0.8, 0.7, {"FedSM[v]": 0.9})
    assert text.endswith("FedSM[v] super model 0.9000: closed. Local-only training: 0.5000.")
    assert "+0.0100" in gap_verdict.noise_note(0.6, 0.61) and gap_verdict.noise_note(math.nan, 0.6) == ""


def test_budget_differences_name_the_settings_that_disagree():
    same = {"image_size": 32, "seed": 0, "num_rounds": 5, "local_epochs": 1}
    assert gap_evaluation.budget_differences({"a": same, "b": dict(same)}) == []
    lines = gap_evaluation.budget_differences({"a": same, "b": {**same, "num_rounds": 6, "seed": 1}})
    assert lines == ["seed: a = 0, b = 1", "num_rounds: a = 5, b = 6"]


def test_unseen_sites_are_the_other_client_datalists(tmp_path):
    for name in ("client_A", "client_B", "client_All", "client_NEW", "other"):
        (tmp_path / f"{name}.json").write_text(json.dumps({}))
    assert gap_evaluation.find_unseen(tmp_path, ["client_A", "client_B"]) == ["client_NEW"]


def test_num_rounds_from_a_variable_or_the_workflow():
    assert num_rounds_of({"num_rounds": 7}, "x") == 7
    assert num_rounds_of({"n": 4, "workflows": [{"args": {"num_rounds": "{n}"}}]}, "x") == 4
    with pytest.raises(ValueError, match="num_rounds"):
        num_rounds_of({"workflows": []}, "cfg.json")


def _comparison(difference, half_width, seeds=3):
    return gap_stats.Comparison("x", "y", seeds, difference, difference - half_width, difference + half_width,
                                difference - half_width, difference + half_width)


def test_seed_noise_is_judged_by_whether_the_t_interval_excludes_zero():
    assert gap_verdict.seed_noise(_comparison(0.02, 0.01)) == "beyond seed noise over 3 seeds"
    assert gap_verdict.seed_noise(_comparison(-0.02, 0.01)) == "beyond seed noise over 3 seeds"
    assert gap_verdict.seed_noise(_comparison(0.02, 0.03)) == "within seed noise over 3 seeds"
    assert gap_verdict.seed_noise(_comparison(0.02, math.nan, 1)) == "seed noise not measured (one seed)"


@pytest.mark.parametrize("vs_fedavg, vs_centralized, words", [
    (_comparison(0.05, 0.01), _comparison(-0.001, 0.01), "FedSM closes the gap"),
    (_comparison(0.03, 0.01), _comparison(-0.02, 0.01), "narrows the gap (60% of it) beyond seed noise but stays"),
    (_comparison(0.01, 0.02), _comparison(-0.04, 0.01), "does not close the gap beyond seed noise"),
    (_comparison(-0.03, 0.01), _comparison(-0.08, 0.01), "is worse than FedAvg beyond seed noise"),
    (_comparison(0.03, math.nan, 1), _comparison(-0.02, math.nan, 1), "partly closed (60% of it) with one seed"),
    (_comparison(0.01, 0.01), _comparison(0.02, 0.01), "no gap to close on these data"),
])
def test_evidence_says_whether_fedsm_closes_the_gap_beyond_seed_noise(vs_fedavg, vs_centralized, words):
    text = gap_verdict.evidence("FedSM (client_adam)", vs_fedavg, vs_centralized)
    assert text.startswith("FedSM (client_adam): ") and words in text
    assert f"super model - FedAvg {vs_fedavg.difference:+.4f}" in text
    assert "cannot be assessed" in gap_verdict.evidence("FedSM", None, vs_centralized)


def test_seed_mean_method_and_stds_come_from_the_per_image_dice():
    runs = [gap_evaluation.MethodResult("m", {"a": np.array([0.2, 0.4]), "b": np.array([0.9])}, {}, "s"),
            gap_evaluation.MethodResult("m", {"a": np.array([0.4, 0.6]), "b": np.array([0.6])}, {}, "s")]
    for run in runs:
        run.pooled = gap_stats.pooled_mean({site: run.per_site[site] for site in ("a", "b")})[1]
    mean = gap_evaluation.mean_over_seeds(runs, ["a", "b"])
    assert mean.per_site == {"a": (2, pytest.approx(0.4)), "b": (1, pytest.approx(0.75))}
    assert mean.pooled == pytest.approx(np.mean([run.pooled for run in runs]))
    stds = gap_evaluation.seed_stds(runs, ["a", "b", gap_stats.POOLED])
    assert stds["a"] == pytest.approx(np.std([0.3, 0.5], ddof=1))
    assert stds["b"] == pytest.approx(np.std([0.9, 0.6], ddof=1))
    assert gap_format.fmt_mean_std(0.4, 0.1) == "0.4000 ± 0.1000"
    assert gap_format.fmt_mean_std(0.4, math.nan) == "0.4000"


def test_seeds_are_given_as_one_run_per_method_and_seed():
    args = gap_report.parse_args(["--fedsm", "s0", "s1", "--fedavg", "f0", "f1", "--fedsm-variant", "v=v0",
                                  "--fedsm-variant", "v=v1", "--output", "out", "--route_by_validation", "0.01"])
    assert args.fedsm == ["s0", "s1"] and args.route_by_validation == 0.01
    assert gap_report.variant_workspaces(args.fedsm_variant) == {"v": ["v0", "v1"]}
    for wrong in (["--fedavg", "f0"], ["--fedsm-variant", "v=v0"]):
        with pytest.raises(SystemExit):
            gap_report.parse_args(["--fedsm", "s0", "s1", *wrong, "--output", "out"])


def test_trusted_sites_are_those_whose_validation_beats_the_global_model_by_the_margin():
    labels = {"client_a": 0, "client_b": 1, "client_c": 2, "client_d": 3}
    validation = {"global": 0.80, "client_a": 0.86, "client_b": 0.82, "client_c": math.nan}
    assert trusted_sites(validation, labels, 0.0) == [0, 1]
    assert trusted_sites(validation, labels, 0.03) == [0]
    assert trusted_sites({**validation, "global": math.nan}, labels, 0.0) == []


def test_images_without_dice_are_left_out_of_site_means_and_pooled_means():
    method = gap_evaluation.MethodResult("m", {"a": np.array([0.2, np.nan, 0.4]), "b": np.array([0.9])}, {}, "s")
    assert method.per_site == {"a": (2, pytest.approx(0.3)), "b": (1, pytest.approx(0.9))}
    assert gap_stats.pooled_mean(method.per_site)[1] == pytest.approx((0.2 + 0.4 + 0.9) / 3)


def _method(name, per_site, pooled):
    return gap_evaluation.MethodResult(name=name, dice={site: np.asarray(values) for site, values in per_site.items()},
                                       config={}, source="", pooled=pooled)


def test_dice_bars_show_the_spread_over_seeds_on_an_axis_that_starts_near_the_bars():
    methods = [_method("FedAvg", {"client_A": [0.84, 0.86], "client_B": [0.90]}, 0.8667),
               _method("FedSM super model", {"client_A": [0.88, 0.90], "client_B": [0.93]}, 0.9033)]
    stds = {"FedAvg": {"client_A": 0.006, "client_B": 0.002, "pooled": 0.006},
            "FedSM super model": {"client_A": 0.011, "client_B": 0.010, "pooled": 0.008}}
    columns = ["client_A", "client_B", "pooled"]
    figure = gap_plots.plot_dice_bars(methods, columns, [], stds, seeds=3)
    axis = figure.get_axes()[0]
    assert axis.get_ylim()[0] == pytest.approx(0.7)  # 0.1 below the lowest bar (0.85), floored to a tenth
    bars = [c for c in axis.containers if isinstance(c, BarContainer)]
    assert len(bars) == 2 and all(c.errorbar is not None for c in bars)
    assert [bar.get_height() for bar in bars[1]] == pytest.approx([0.89, 0.93, 0.9033])
    spreads = [segment[1][1] - segment[0][1] for segment in bars[1].errorbar.lines[2][0].get_segments()]
    assert spreads == pytest.approx([0.022, 0.020, 0.016])  # ± one std
    assert "mean ± std over 3 seeds" in axis.get_title()
    one_seed = gap_plots.plot_dice_bars(methods, columns, [], stds, seeds=1).get_axes()[0]
    assert all(c.errorbar is None for c in one_seed.containers if isinstance(c, BarContainer))
    assert "std" not in one_seed.get_title()
