import math

from fedsm.core.best_models import BEST_MODEL_RULES, improved_models, mean_metric, median_metric

MEDIAN, REFERENCE = BEST_MODEL_RULES["median"], BEST_MODEL_RULES["reference"]


def _metrics(g, s, p, confidence=0.5):
    return {"val_metric_global_model": g, "val_metric_select_model": s, "val_metric_person_model": p,
            "val_confidence_select_model": confidence}


def _rounds_picked(rule, history, weights, final_round=None):
    """Replay a scripted history {round: {site: metrics}}; the round each model's best comes from."""
    best, picked = {}, {}
    for round_number, metrics in history.items():
        final = round_number == final_round
        for model, client, _ in improved_models(metrics, weights, best, rule, round_number, final):
            picked[model if client is None else f"{model}/{client}"] = round_number
    return picked


HISTORY = {  # three sites; round 3 is the validation of the final models
    0: {"a": _metrics(0.70, 0.2, 0.5), "b": _metrics(0.70, 0.2, 0.5), "c": _metrics(0.70, 0.9, 0.5)},
    1: {"a": _metrics(0.60, 0.9, 0.6), "b": _metrics(0.60, 0.9, 0.4), "c": _metrics(0.60, 0.9, 0.4)},
    2: {"a": _metrics(0.65, 1.0, 0.4), "b": _metrics(0.50, 1.0, 0.4), "c": _metrics(0.90, 1.0, 0.4)},
    3: {"a": _metrics(0.80, 1.0, 0.7, 0.9), "b": _metrics(0.80, 1.0, 0.4, 0.8), "c": _metrics(0.80, 1.0, 0.4)},
}
STEPS = {"a": 10.0, "b": 10.0, "c": 20.0}


def test_reference_rule_skips_round_zero_weights_by_steps_and_ignores_the_final_models():
    picked = _rounds_picked(REFERENCE, HISTORY, STEPS, final_round=3)
    # round 2's step-weighted global mean (0.65 + 0.5 + 2 * 0.9) / 4 = 0.7375 beats round 1's 0.6
    assert picked == {"global": 2, "selector": 2, "personalized/a": 1, "personalized/b": 1, "personalized/c": 1}


def test_reference_rule_keeps_the_first_maximum():
    history = {1: {"a": _metrics(0.5, 1.0, 0.5, 0.6)}, 2: {"a": _metrics(0.5, 1.0, 0.5, 0.99)}}
    assert _rounds_picked(REFERENCE, history, {"a": 1.0}) == {"global": 1, "selector": 1, "personalized/a": 1}


def test_median_rule_counts_round_zero_and_the_final_models_and_breaks_selector_ties_by_confidence():
    picked = _rounds_picked(MEDIAN, HISTORY, STEPS, final_round=3)
    # global medians 0.70, 0.60, 0.65, 0.80; selector medians 0.2, 0.9, 1.0, 1.0 (round 3 more confident)
    assert picked == {"global": 3, "selector": 3, "personalized/a": 3, "personalized/b": 0, "personalized/c": 0}


def test_one_site_perfect_score_does_not_pin_the_median_rule():
    """A broken site reports Dice 1.0 once, then 0: the median still follows the other sites."""
    history = {1: {"a": _metrics(0.60, 0.5, 0.5), "b": _metrics(0.62, 0.5, 0.5), "evil": _metrics(1.0, 1.0, 1.0)},
               2: {"a": _metrics(0.70, 0.5, 0.5), "b": _metrics(0.72, 0.5, 0.5), "evil": _metrics(0.0, 0.0, 0.0)}}
    weights = {"a": 10.0, "b": 10.0, "evil": 30.0}
    assert _rounds_picked(MEDIAN, history, weights)["global"] == 2
    assert _rounds_picked(REFERENCE, history, weights)["global"] == 1  # why the weighted mean is not the default


def test_nan_metric_never_becomes_best():
    best = {}
    assert improved_models({"a": _metrics(float("nan"), float("nan"), float("nan"))}, {"a": 2}, best) == []
    assert math.isnan(mean_metric({}, {}, "val_metric_global_model"))
    assert math.isnan(median_metric({}, "val_metric_global_model"))


def test_mean_metric_weights_sites_and_skips_those_without_weight():
    metrics = {"a": _metrics(0.2, 0, 0), "b": _metrics(0.4, 0, 0), "c": _metrics(0.9, 0, 0)}
    assert math.isclose(mean_metric(metrics, {"a": 1, "b": 3}, "val_metric_global_model"), (0.2 + 3 * 0.4) / 4)
