import math

from fedsm.core.best_models import improved_models, mean_metric


def _metrics(g, s, p):
    return {"val_metric_global_model": g, "val_metric_select_model": s, "val_metric_person_model": p}


def test_best_models_are_replaced_when_the_metric_improves_in_a_later_round():
    best = {}
    sizes = {"a": 1, "b": 3}
    first = improved_models({"a": _metrics(0.2, 0.0, 0.3), "b": _metrics(0.4, 1.0, 0.1)}, sizes, best)
    assert {(m, c) for m, c, _ in first} == {("global", None), ("selector", None), ("personalized", "a"),
                                            ("personalized", "b")}
    assert math.isclose(best["global"], (0.2 + 3 * 0.4) / 4)
    # round 2: global and b's personalized improve, selector and a's personalized do not
    second = improved_models({"a": _metrics(0.5, 0.0, 0.2), "b": _metrics(0.5, 1.0, 0.6)}, sizes, best)
    assert {(m, c) for m, c, _ in second} == {("global", None), ("personalized", "b")}
    assert math.isclose(best["global"], 0.5) and math.isclose(best["personalized/a"], 0.3)


def test_nan_metric_never_becomes_best():
    best = {}
    assert improved_models({"a": _metrics(float("nan"), float("nan"), float("nan"))}, {"a": 2}, best) == []
    assert math.isnan(mean_metric({}, {}, "val_metric_global_model"))


def test_selector_accuracy_tie_goes_to_the_more_confident_selector():
    best = {}
    sizes = {"a": 1}

    def selector(acc, conf):
        return {"a": {**_metrics(0.1, acc, 0.1), "val_confidence_select_model": conf}}

    improved_models(selector(1.0, 0.6), sizes, best)
    assert ("selector", None, 1.0) in improved_models(selector(1.0, 0.9), sizes, best)
    assert all(m != "selector" for m, _, _ in improved_models(selector(1.0, 0.8), sizes, best))
    assert all(m != "selector" for m, _, _ in improved_models(selector(0.9, 0.99), sizes, best))
