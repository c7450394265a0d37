import numpy as np
import pytest

from fedsm.core.model_set import ModelSet
from fedsm.core.round_aggregation import RoundAggregator

LABELS = {"client_a": 0, "client_b": 1, "client_c": 2}


def _weights(value):
    return {"w": np.full((2, 3), value, np.float32), "b": np.full((3,), value, np.float32)}


def _current():
    return ModelSet(global_model=_weights(1.0), selector={"s": np.full((4,), 10.0, np.float32)},
                    selector_moments={}, personalized={c: _weights(float(i)) for i, c in enumerate(LABELS)})


def _update(value, selector_diff=1.0, moment=1.0):
    return {
        "global": _weights(value),
        "selector": {"s": np.full((4,), selector_diff, np.float32)},
        "selector_moments": {"exp_avg/s": np.full((4,), moment, np.float32),
                             "exp_avg_sq/s": np.full((4,), moment, np.float32), "step": np.asarray(1.0, np.float32)},
        "personalized": _weights(value * 10),
    }


def test_round_aggregates_by_steps_and_soft_pulls():
    round_ = RoundAggregator(_current(), LABELS, soft_pull_lambda=0.5)
    assert round_.accept("client_a", 0, _update(1.0, selector_diff=2.0, moment=1.0), weight=1) is None
    assert round_.accept("client_b", 1, _update(4.0, selector_diff=-2.0, moment=5.0), weight=3) is None
    models = round_.result()
    np.testing.assert_allclose(models.global_model["w"], 1.0 + (1 * 1 + 4 * 3) / 4)
    np.testing.assert_allclose(models.selector["s"], 10.0 + (2 - 6) / 4)
    np.testing.assert_allclose(models.selector_moments["exp_avg/s"], (1 + 15) / 4)
    np.testing.assert_allclose(models.personalized["client_a"]["w"], 0.5 * 10 + 0.5 * 40)
    np.testing.assert_allclose(models.personalized["client_b"]["w"], 0.5 * 40 + 0.5 * 10)
    # a client without an update keeps its personalized model
    np.testing.assert_array_equal(models.personalized["client_c"]["w"], _current().personalized["client_c"]["w"])
    assert models.next_round == 1
    assert all(a.dtype == np.float32 for a in [*models.global_model.values(), *models.selector.values(),
                                               *models.selector_moments.values()])


def test_nan_update_is_excluded_and_others_aggregate():
    round_ = RoundAggregator(_current(), LABELS, soft_pull_lambda=0.7)
    bad = _update(1.0)
    bad["global"]["w"][0, 0] = np.nan
    reason = round_.accept("client_a", 0, bad, weight=1)
    assert reason and "NaN" in reason and "global" in reason
    inf = _update(1.0)
    inf["selector_moments"]["exp_avg_sq/s"][1] = np.inf
    assert "NaN/Inf" in round_.accept("client_c", 2, inf, weight=1)
    assert round_.accept("client_b", 1, _update(2.0), weight=1) is None
    models = round_.result()
    np.testing.assert_allclose(models.global_model["w"], 3.0)
    assert round_.contributors == ["client_b"]


@pytest.mark.parametrize("mutate, expected", [
    (lambda u: u["global"].update(w=np.zeros((3, 2), np.float32)), "shape"),
    (lambda u: u["personalized"].pop("b"), "missing"),
    (lambda u: u["selector_moments"].pop("step"), "missing"),
    (lambda u: u.pop("selector"), "lacks"),
])
def test_malformed_updates_are_rejected_with_reason(mutate, expected):
    round_ = RoundAggregator(_current(), LABELS, soft_pull_lambda=0.7)
    update = _update(1.0)
    mutate(update)
    assert expected in round_.accept("client_a", 0, update, weight=1)
    with pytest.raises(RuntimeError, match="no valid client update"):
        round_.result()


def test_wrong_label_unknown_client_and_duplicate_are_rejected():
    round_ = RoundAggregator(_current(), LABELS, soft_pull_lambda=0.7)
    assert "not the label" in round_.accept("client_a", 2, _update(1.0), weight=1)
    assert "not in client_id_label_mapping" in round_.accept("global", 0, _update(1.0), weight=1)
    assert round_.accept("client_a", 0, _update(1.0), weight=1) is None
    assert "second update" in round_.accept("client_a", 0, _update(1.0), weight=1)
