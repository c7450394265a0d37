"""Bounds on one site's influence (core.robust) and the rotated server states (io.checkpoint)."""

import os

import numpy as np
import pytest

from fedsm.core.model_set import ModelSet
from fedsm.core.robust import capped_weight, nonfinite_arrays, norm_outliers, update_norm
from fedsm.io.checkpoint import (CheckpointError, load_checkpoint, rotated_states, save_rotated_state,
                                 model_set_from_checkpoint, model_set_to_checkpoint)


def test_a_weight_never_exceeds_the_declared_steps():
    assert capped_weight(50, None) == 50  # the first update declares
    assert capped_weight(1_000_000, 50) == 50
    assert capped_weight(20, 50) == 20


def test_update_norm_covers_every_part_given():
    a = {"x": np.array([3.0, 0.0], np.float32)}
    b = {"y": np.array([[4.0]], np.float32)}
    assert update_norm(a, None, b) == pytest.approx(5.0)
    assert update_norm() == 0.0


def test_norm_outliers_against_the_round_median():
    norms = {"a": 1.0, "b": 1.2, "c": 0.9, "evil": 50.0}
    assert norm_outliers(norms, 10.0) == ["evil"]
    assert norm_outliers(norms, 0.0) == []  # off
    assert norm_outliers({"a": 1.0, "evil": 50.0}, 10.0) == []  # two updates have no meaningful median


def _models(value=1.0, next_round=1):
    w = {"w": np.full((2, 2), value, np.float32)}
    return ModelSet(global_model=dict(w), selector={"s": np.full(3, value, np.float32)}, selector_moments={},
                    personalized={"site": dict(w)}, next_round=next_round, declared_steps={"site": 7})


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
    assert latest.next_round == 5 and latest.declared_steps == {"site": 7}
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
