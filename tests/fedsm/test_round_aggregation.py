import numpy as np
import pytest

from fedsm.core.model_set import ModelSet
from fedsm.core.round_aggregation import RoundAggregator
from fedsm.core.selector_update import SelectorUpload
from fedsm.selector_training import SELECTOR_TRAININGS, selector_training

LABELS = {"client_a": 0, "client_b": 1, "client_c": 2}
SELECTOR = {"s": (4,), "t": (2,)}


def _weights(value):
    return {"w": np.full((2, 3), value, np.float32), "b": np.full((3,), value, np.float32)}


def _moments(value, step=1.0):
    return {**{f"{kind}/{name}": np.full(shape, value, np.float32)
               for name, shape in SELECTOR.items() for kind in ("exp_avg", "exp_avg_sq")},
            "step": np.asarray(step, np.float32)}


def _current(moments=None):
    return ModelSet(global_model=_weights(1.0),
                    selector={name: np.full(shape, 10.0, np.float32) for name, shape in SELECTOR.items()},
                    selector_moments={} if moments is None else moments,
                    personalized={c: _weights(float(i)) for i, c in enumerate(LABELS)})


def _round(lam=0.5, mode="client_adam", current=None):
    current = current or _current()
    update = selector_training(mode).server_update(current.selector, current.selector_moments, 0.1)
    return RoundAggregator(current, LABELS, soft_pull_lambda=lam, server_update=update)


def _update(value, selector_diff=1.0, moment=1.0, mode="client_adam"):
    """`accept`'s keyword arguments: global diff `value`, personalized `10 * value`, the selector upload."""
    selector = {name: np.full(shape, selector_diff, np.float32) for name, shape in SELECTOR.items()}
    upload = SelectorUpload(gradient=selector) if mode != "client_adam" else \
        SelectorUpload(diff=selector, moments=_moments(moment))
    return {"global_diff": _weights(value), "personalized": _weights(value * 10), "selector": upload}


def _without(update, *names):
    """The update as after a filter that excluded `names` from every part (moments: their keys too)."""
    upload = {field: {key: array for key, array in arrays.items() if key.split("/")[-1] not in names}
              for field, arrays in vars(update["selector"]).items() if arrays is not None}
    return {"global_diff": {key: array for key, array in update["global_diff"].items() if key not in names},
            "personalized": {key: array for key, array in update["personalized"].items() if key not in names},
            "selector": SelectorUpload(**upload)}


def test_round_aggregates_by_steps_and_soft_pulls():
    round_ = _round(lam=0.5)
    assert round_.accept("client_a", 0, **_update(1.0, selector_diff=2.0, moment=1.0), weight=1) is None
    assert round_.accept("client_b", 1, **_update(4.0, selector_diff=-2.0, moment=5.0), weight=3) is None
    models = round_.result()
    np.testing.assert_allclose(models.global_model["w"], 1.0 + (1 * 1 + 4 * 3) / 4)
    np.testing.assert_allclose(models.selector["s"], 10.0 + (2 - 6) / 4)
    np.testing.assert_allclose(models.selector_moments["exp_avg/s"], (1 + 15) / 4)
    np.testing.assert_allclose(models.personalized["client_a"]["w"], 0.5 * 10 + 0.5 * 40)
    np.testing.assert_allclose(models.personalized["client_b"]["w"], 0.5 * 40 + 0.5 * 10)
    # a client without an update keeps its personalized model
    np.testing.assert_array_equal(models.personalized["client_c"]["w"], _current().personalized["client_c"]["w"])
    assert models.next_round == 1 and round_.contributors == ["client_a", "client_b"]
    assert all(a.dtype == np.float32 for a in [*models.global_model.values(), *models.selector.values(),
                                               *models.selector_moments.values()])


def test_nan_update_is_excluded_and_others_aggregate():
    round_ = _round(lam=0.7)
    bad = _update(1.0)
    bad["global_diff"]["w"][0, 0] = np.nan
    reason = round_.accept("client_a", 0, **bad, weight=1)
    assert reason and "NaN" in reason and "global" in reason
    inf = _update(1.0)
    inf["selector"].moments["exp_avg_sq/s"][1] = np.inf
    assert "moments: NaN/Inf" in round_.accept("client_c", 2, **inf, weight=1)
    assert round_.accept("client_b", 1, **_update(2.0), weight=1) is None
    models = round_.result()
    np.testing.assert_allclose(models.global_model["w"], 3.0)
    assert round_.contributors == ["client_b"]


def test_negative_exp_avg_sq_is_rejected():
    round_ = _round()
    update = _update(1.0)
    update["selector"].moments["exp_avg_sq/t"][0] = -1e-3
    assert "negative exp_avg_sq in ['exp_avg_sq/t']" in round_.accept("client_a", 0, **update, weight=1)
    update["selector"].moments["exp_avg_sq/t"][0] = 0.0
    update["selector"].moments["exp_avg/t"][0] = -1.0  # the first moment may be negative
    assert round_.accept("client_a", 0, **update, weight=1) is None


@pytest.mark.parametrize("client, label, weight, expected", [
    ("client_a", 2, 1, "not the label"),
    ("global", 0, 1, "not in client_id_label_mapping"),
    ("client_a", 0, 0, "invalid aggregation weight"),
    ("client_a", 0, np.nan, "invalid aggregation weight"),
])
def test_an_update_that_does_not_belong_is_rejected_and_nothing_added(client, label, weight, expected):
    round_ = _round()
    assert expected in round_.accept(client, label, **_update(1.0), weight=weight)
    with pytest.raises(RuntimeError, match="no valid client update"):
        round_.result()


def test_a_second_update_of_a_client_is_rejected():
    round_ = _round()
    assert round_.accept("client_a", 0, **_update(1.0), weight=1) is None
    assert "second update" in round_.accept("client_a", 0, **_update(1.0), weight=1)


def test_a_variable_one_client_did_not_send_is_averaged_over_those_that_did():
    lam = 0.75
    round_ = _round(lam=lam, current=_current(_moments(0.5, step=2.0)))
    assert round_.accept("client_a", 0, **_update(1.0, selector_diff=2.0, moment=1.0), weight=1) is None
    assert round_.accept("client_b", 1, **_without(_update(4.0, selector_diff=-2.0, moment=5.0), "b", "t"),
                         weight=3) is None
    models = round_.result()
    np.testing.assert_allclose(models.global_model["w"], 1.0 + (1 * 1 + 4 * 3) / 4)
    np.testing.assert_allclose(models.global_model["b"], 1.0 + 1.0)  # client_a's diff alone
    np.testing.assert_allclose(models.selector["s"], 10.0 + (2 - 6) / 4)
    np.testing.assert_allclose(models.selector["t"], 10.0 + 2.0)
    np.testing.assert_allclose(models.selector_moments["exp_avg/s"], (1 + 15) / 4)
    np.testing.assert_allclose(models.selector_moments["exp_avg_sq/t"], 1.0)
    # SoftPull: the variable client_b did not send counts as the model the server holds for it (1.0)
    np.testing.assert_allclose(models.personalized["client_a"]["w"], lam * 10 + (1 - lam) * 40)
    np.testing.assert_allclose(models.personalized["client_a"]["b"], lam * 10 + (1 - lam) * 1)
    np.testing.assert_allclose(models.personalized["client_b"]["b"], lam * 1 + (1 - lam) * 10)


@pytest.mark.parametrize("mode", sorted(SELECTOR_TRAININGS))
def test_a_variable_nobody_sent_keeps_its_global_and_selector_weights_and_moments(mode):
    current = _current(_moments(0.5, step=2.0))
    round_ = _round(mode=mode, current=current)
    for label, client in enumerate(("client_a", "client_b")):
        assert round_.accept(client, label, **_without(_update(1.0 + label, mode=mode), "b", "t"), weight=1) is None
    models = round_.result()
    assert not np.allclose(models.global_model["w"], current.global_model["w"])
    np.testing.assert_array_equal(models.global_model["b"], current.global_model["b"])
    assert not np.allclose(models.selector["s"], current.selector["s"])
    np.testing.assert_array_equal(models.selector["t"], current.selector["t"])
    assert sorted(models.selector_moments) == sorted(current.selector_moments)
    for kind in ("exp_avg", "exp_avg_sq"):
        np.testing.assert_array_equal(models.selector_moments[f"{kind}/t"], current.selector_moments[f"{kind}/t"])


def test_a_personalized_variable_nobody_sent_is_unchanged():
    current = _current()
    round_ = _round(lam=0.5, current=current)
    for label, client in enumerate(("client_a", "client_b")):
        assert round_.accept(client, label, **_without(_update(1.0), "b"), weight=1) is None
    models = round_.result()
    for client in ("client_a", "client_b"):
        np.testing.assert_array_equal(models.personalized[client]["b"], current.personalized[client]["b"])
