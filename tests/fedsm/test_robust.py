"""Bounds on one site's influence (core.robust) and the rotated server states (io.checkpoint)."""

import math
import os

import numpy as np
import pytest

from fedsm.core.model_set import ModelSet
from fedsm.core.robust import (EXP_AVG_PART, EXP_AVG_SQ_PART, GLOBAL_PART, PERSONALIZED_PART, SELECTOR_PART,
                               STEPS_HISTORY, InfluenceBounds, bounded_claims, exceeds_run_scale, lower_median,
                               missing_arrays, nonfinite_arrays, part_norms, run_scale, screen_round)
from fedsm.core.selector_update import SelectorUpload
from fedsm.io.checkpoint import (CheckpointError, load_checkpoint, rotated_states, save_rotated_state,
                                 model_set_from_checkpoint, model_set_to_checkpoint)


def test_lower_median_takes_the_lower_middle_value():
    assert lower_median([5.0, 1.0, 3.0]) == 3.0
    assert lower_median([10.0, 1.0]) == 1.0  # of two sites, neither can raise it
    assert lower_median([4.0, 1.0, 3.0, 2.0]) == 2.0


def test_claims_are_bounded_by_the_lower_median_and_a_site_maximum():
    claims = {"a": 100, "b": 120, "c": 1_000_000}
    assert bounded_claims(claims, 3.0) == {"a": 100.0, "b": 120.0, "c": 360.0}
    assert bounded_claims(claims, 0.0) == {"a": 100.0, "b": 120.0, "c": 1_000_000.0}  # off
    assert bounded_claims(claims, 3.0, {"a": 50}) == {"a": 50.0, "b": 120.0, "c": 360.0}
    assert bounded_claims({"a": 100, "evil": 10**6}, 3.0)["evil"] == 300.0


def _norms(value, **parts):
    return {GLOBAL_PART: value, PERSONALIZED_PART: value, SELECTOR_PART: value, **parts}


def test_screen_rejects_a_part_over_the_round_lower_median_and_records_history():
    norms = {"a": _norms(1.0), "b": _norms(1.2), "c": _norms(0.9), "evil": _norms(1.0, **{SELECTOR_PART: 50.0})}
    screen = screen_round({"a": 10, "b": 12, "c": 9, "evil": 10}, norms, InfluenceBounds(norm_ratio=10.0), {})
    assert set(screen.rejected) == {"evil"} and "selector update norm 50" in screen.rejected["evil"]
    assert screen.weights == {"a": 10.0, "b": 12.0, "c": 9.0} and screen.capped == {}
    assert screen.history[SELECTOR_PART] == [1.0]  # the lower median of the sites kept
    assert screen.references[SELECTOR_PART] == (1.0, "the round's lower median")
    assert "selector update 1 (the round's lower median)" in screen.describe_references()


def test_screen_with_two_sites_uses_the_run_scale():
    history = {part: [1.0, 1.1, 0.9] for part in (GLOBAL_PART, PERSONALIZED_PART, SELECTOR_PART)}
    norms = {"a": _norms(1.0), "evil": _norms(1e14)}
    screen = screen_round({"a": 10, "evil": 10}, norms, InfluenceBounds(), history)
    assert set(screen.rejected) == {"evil"} and "the run's scale" in screen.rejected["evil"]
    assert screen.history[GLOBAL_PART] == [1.0, 1.1, 0.9, 1.0]
    assert not screen_round({"a": 10, "evil": 10}, norms, InfluenceBounds(), {}).rejected  # nothing to compare with


def test_run_scale_is_the_root_mean_square_of_the_past_references():
    assert run_scale([]) is None
    assert run_scale([3.0, 4.0]) == pytest.approx(math.sqrt(12.5))
    assert run_scale([1e4] + [30.0] * 50) > 1e3  # an early large round keeps counting


def test_the_site_the_selector_still_gets_wrong_is_not_left_out():
    """The VGG11 run of docs/generalization_gap.md: the selector has learned two sites, whose full-batch
    gradients fell to 25-80, while the third site's stays near 1000; early in that run every site's was
    near 1e4 (its log), as in this history.
    Measured against the round alone (1000 > 10 x 50) that site was left out every round, so the
    selector never learned it; against the run's scale it counts. A gradient 1e6 x the others' (a site
    that did not normalize) is still left out."""
    history = {SELECTOR_PART: [9000.0, 11000.0, 6000.0, 3000.0, 1500.0] + [400.0] * 20 + [60.0] * 30}
    norms = {"a": {SELECTOR_PART: 50.3}, "b": {SELECTOR_PART: 81.2}, "c": {SELECTOR_PART: 1005.0}}
    screen = screen_round({"a": 1, "b": 1, "c": 1}, norms, InfluenceBounds(), history)
    assert screen.rejected == {}
    assert screen.references[SELECTOR_PART] == (pytest.approx(run_scale(history[SELECTOR_PART])), "the run's scale")
    assert set(screen_round({"a": 1, "b": 1, "c": 1}, norms, InfluenceBounds(), {}).rejected) == {"c"}  # round alone
    norms["evil"] = {SELECTOR_PART: 5e7}
    screen = screen_round({"a": 1, "b": 1, "c": 1, "evil": 1}, norms, InfluenceBounds(), history)
    assert set(screen.rejected) == {"evil"} and "the run's scale" in screen.rejected["evil"]


def test_an_update_aggregated_on_arrival_always_passes_the_round_screen():
    """Whatever `exceeds_run_scale` lets through at once passes `screen_round` with its claimed weight,
    so with history no round is discarded for an update streamed into the sums (random rounds)."""
    rng = np.random.default_rng(0)
    bounds = InfluenceBounds()
    for _ in range(500):
        history = {part: list(10.0 ** rng.uniform(-2, 4, rng.integers(1, 8))) for part in (GLOBAL_PART, SELECTOR_PART)}
        history[STEPS_HISTORY] = list(rng.integers(1, 200, rng.integers(1, 8)).astype(float))
        sites = [f"s{i}" for i in range(rng.integers(1, 6))]
        norms = {site: {part: float(10.0 ** rng.uniform(-3, 5)) for part in (GLOBAL_PART, SELECTOR_PART)}
                 for site in sites}
        steps = {site: int(rng.integers(1, 2000)) for site in sites}
        streamed = [site for site in sites if exceeds_run_scale(steps[site], norms[site], bounds, history) is None]
        screen = screen_round(steps, norms, bounds, history)
        for site in streamed:
            assert site not in screen.rejected and screen.weights[site] == steps[site]


def test_screen_leaves_out_updates_without_content_and_caps_weights():
    norms = {"a": _norms(1.0), "b": _norms(1.0), "empty": {GLOBAL_PART: 0.0, PERSONALIZED_PART: 0.0}}
    screen = screen_round({"a": 100, "b": 10**6, "empty": 10**6}, norms, InfluenceBounds(steps_ratio=3.0), {})
    assert "no effective content" in screen.rejected["empty"]
    assert screen.weights == {"a": 100.0, "b": 300.0} and "weighted as 300" in screen.capped["b"]


def test_an_update_over_the_run_scale_waits_for_the_round():
    history = {GLOBAL_PART: [1.0, 1.2], STEPS_HISTORY: [10.0]}
    bounds = InfluenceBounds()
    assert exceeds_run_scale(12, {GLOBAL_PART: 5.0}, bounds, history) is None
    assert "global difference norm" in exceeds_run_scale(12, {GLOBAL_PART: 50.0}, bounds, history)
    assert "local steps" in exceeds_run_scale(31, {GLOBAL_PART: 1.0}, bounds, history)
    assert exceeds_run_scale(10**6, {GLOBAL_PART: 1e14}, bounds, {}) is None  # no history: the screen decides
    screen = screen_round({"a": 10, "b": 14}, {"a": _norms(1.0), "b": _norms(1.0)}, bounds, {})
    assert screen.history[STEPS_HISTORY] == [10.0]


def test_history_keeps_every_round():
    history = {GLOBAL_PART: [1.0, 2.0, 3.0]}
    screen = screen_round({"a": 1}, {"a": {GLOBAL_PART: 4.0}}, InfluenceBounds(), history)
    assert screen.history[GLOBAL_PART] == [1.0, 2.0, 3.0, 4.0]


def test_bounds_reject_meaningless_settings():
    with pytest.raises(ValueError, match="norm_ratio"):
        InfluenceBounds(norm_ratio=0.5)
    with pytest.raises(ValueError, match="max_steps"):
        InfluenceBounds(max_steps={"a": 0})


def test_part_norms_measure_each_part_in_gradient_units():
    held = {"w": np.ones(4, np.float32)}
    upload = SelectorUpload(diff={"s": np.array([3.0, 4.0], np.float32)},
                            moments={"exp_avg/s": np.array([0.0, 2.0], np.float32),
                                     "exp_avg_sq/s": np.array([9.0, 16.0], np.float32), "step": np.float32(1)})
    norms = part_norms({"w": np.full(4, 0.5, np.float32)}, {"w": np.full(4, 2.0, np.float32)}, held, upload)
    assert norms == pytest.approx({GLOBAL_PART: 1.0, PERSONALIZED_PART: 2.0, SELECTOR_PART: 5.0, EXP_AVG_PART: 2.0,
                                   EXP_AVG_SQ_PART: 5.0})


def test_missing_arrays_names_what_the_next_tasks_would_lack():
    template = _models()
    assert missing_arrays(_models(2.0), template) == []
    broken = _models(2.0)
    broken.selector_moments = {"exp_avg/s": np.zeros(3, np.float32), "step": np.float32(1)}
    del broken.personalized["site"]["w"]
    assert missing_arrays(broken, template) == ["personalized/site/w", "selector_moments/exp_avg_sq/s"]


def _models(value=1.0, next_round=1):
    w = {"w": np.full((2, 2), value, np.float32)}
    return ModelSet(global_model=dict(w), selector={"s": np.full(3, value, np.float32)}, selector_moments={},
                    personalized={"site": dict(w)}, next_round=next_round,
                    norm_history={"global difference": [0.5, 0.25]})


def test_nonfinite_arrays_names_the_part_and_array():
    models = _models()
    assert nonfinite_arrays(models) == []
    models.personalized["site"]["w"] = np.full((2, 2), np.inf, np.float32)
    assert nonfinite_arrays(models) == ["personalized/site/w"]


def test_rotated_states_keep_the_newest_and_the_link_points_at_it(tmp_path):
    for next_round in range(1, 6):
        path = save_rotated_state(tmp_path, "fedsm_state.pt", model_set_to_checkpoint(_models(next_round, next_round)),
                                  next_round, keep=3)
    assert [p.name for p in rotated_states(tmp_path, "fedsm_state.pt")] == [
        "fedsm_state.r00005.pt", "fedsm_state.r00004.pt", "fedsm_state.r00003.pt"]
    latest = model_set_from_checkpoint(load_checkpoint(path), path)
    assert latest.next_round == 5 and latest.norm_history == {"global difference": [0.5, 0.25]}
    assert os.stat(path).st_mode & 0o777 == 0o600


def test_a_truncated_state_is_reported_naming_it(tmp_path):
    path = save_rotated_state(tmp_path, "fedsm_state.pt", model_set_to_checkpoint(_models()), 1, keep=3)
    data = path.read_bytes()
    (tmp_path / "fedsm_state.r00002.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="fedsm_state.r00002.pt"):
        load_checkpoint(tmp_path / "fedsm_state.r00002.pt")


def test_the_persistor_falls_back_to_the_newest_state_that_loads(tmp_path):
    from nvflare.apis.fl_constant import FLContextKey
    from nvflare.apis.fl_context import FLContext

    from fedsm.flare.persistor import FedSMModelPersistor

    for next_round in (1, 2):
        save_rotated_state(tmp_path, "fedsm_state.pt", model_set_to_checkpoint(_models(next_round, next_round)),
                           next_round, keep=3)
    newest = tmp_path / "fedsm_state.r00002.pt"
    newest.unlink()
    (tmp_path / "fedsm_state.pt").unlink()
    newest.write_bytes(b"truncated")  # a save cut short, and the link lost
    fl_ctx = FLContext()
    fl_ctx.set_prop(FLContextKey.APP_ROOT, str(tmp_path))
    models = FedSMModelPersistor(keep_states=3).load(["site"], fl_ctx)
    assert models.next_round == 1 and float(models.global_model["w"][0, 0]) == 1.0
