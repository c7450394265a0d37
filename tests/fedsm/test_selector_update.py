import numpy as np
import pytest
import torch

from fedsm.core.adam_moments import extract_adam_moments
from fedsm.core.model_set import ModelSet
from fedsm.core.round_aggregation import RoundAggregator
from fedsm.core.selector_update import SelectorUpload, adam_step, adam_update
from fedsm.selector_training import selector_training


def test_adam_step_on_arrays_matches_torch_adam_over_several_steps():
    torch.manual_seed(0)
    param = torch.nn.Parameter(torch.randn(5, 3))
    optimizer = torch.optim.Adam([param], lr=1e-2)
    weights = {"p": param.detach().numpy().copy()}
    moments = {}
    for _ in range(3):
        gradient = torch.randn(5, 3)
        param.grad = gradient.clone()
        optimizer.step()
        weights, moments = adam_step(weights, {"p": gradient.numpy()}, moments, lr=1e-2)
    np.testing.assert_allclose(weights["p"], param.detach().numpy(), rtol=1e-5, atol=1e-7)
    torch_moments = extract_adam_moments(optimizer, [("p", param)])
    for key in ("exp_avg/p", "exp_avg_sq/p", "step"):
        np.testing.assert_allclose(moments[key], torch_moments[key], rtol=1e-5, atol=1e-9)
    assert weights["p"].dtype == np.float32 and moments["exp_avg/p"].dtype == np.float32



def test_adam_update_in_place_matches_torch_adam_and_overwrites_only_its_outputs():
    """The client's use: moments step in place and the update is written over the gradient."""
    torch.manual_seed(0)
    param = torch.nn.Parameter(torch.randn(5, 3))
    optimizer = torch.optim.Adam([param], lr=1e-2)
    weights, exp_avg, exp_avg_sq = param.detach().clone(), torch.empty(5, 3), torch.empty(5, 3)
    previous = None
    for step in range(1, 4):
        gradient = torch.randn(5, 3)
        param.grad = gradient.clone()
        optimizer.step()
        update = adam_update(gradient, previous, float(step), 1e-2, (exp_avg, exp_avg_sq), gradient)
        assert update.data_ptr() == gradient.data_ptr()
        weights.add_(update)
        previous = (exp_avg, exp_avg_sq)
    torch.testing.assert_close(weights, param.detach(), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(exp_avg, optimizer.state[param]["exp_avg"], rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(exp_avg_sq, optimizer.state[param]["exp_avg_sq"], rtol=1e-5, atol=1e-9)

LABELS = {"a": 0, "b": 1}


def _round(current: ModelSet, mode: str, lr: float) -> RoundAggregator:
    server_update = selector_training(mode).server_update(current.selector, current.selector_moments, lr)
    return RoundAggregator(current, LABELS, 0.7, server_update)


def _accept(round_: RoundAggregator, client: str, upload: SelectorUpload, weight: float):
    shape = round_.current.global_model["w"].shape
    return round_.accept(client, LABELS[client], {"w": np.zeros(shape, np.float32)}, {"w": np.ones(shape, np.float32)},
                         upload, weight)


def _current(selector=None, moments=None):
    w = {"w": np.ones((2, 2), np.float32)}
    return ModelSet(global_model=dict(w), selector=selector or {"s": np.ones(3, np.float32)},
                    selector_moments=moments or {}, personalized={"a": dict(w), "b": dict(w)})


def test_server_adam_round_is_centralized_adam_on_the_weighted_mean_gradient():
    round_ = _round(_current(), "server_adam", lr=0.1)
    assert _accept(round_, "a", SelectorUpload(gradient={"s": np.array([1, 2, 3], np.float32)}), 1) is None
    assert _accept(round_, "b", SelectorUpload(gradient={"s": np.array([3, 2, 1], np.float32)}), 3) is None
    models = round_.result()
    expected, moments = adam_step({"s": np.ones(3, np.float32)}, {"s": np.array([2.5, 2.0, 1.5], np.float32)}, {},
                                  lr=0.1)
    np.testing.assert_allclose(models.selector["s"], expected["s"], rtol=1e-6)
    np.testing.assert_allclose(models.selector_moments["exp_avg/s"], moments["exp_avg/s"], rtol=1e-6)
    # first Adam step moves every parameter by lr against the gradient's sign
    np.testing.assert_allclose(models.selector["s"], 0.9, rtol=1e-5)


@pytest.mark.parametrize("first_round", [False, True])
@pytest.mark.parametrize("chunk", [None, 3])
def test_client_adam_on_server_equals_client_adam_with_torch_steps_on_clients(first_round, chunk, monkeypatch):
    """Same round, two wire formats: clients stepping torch Adam and sending diffs + moments, or
    sending gradients for the server to replay; the next selector and moments must agree (also in
    round 0, when there are no moments yet, and when the replay runs in chunks that split a parameter)."""
    from fedsm.core import selector_update
    from fedsm.core.adam_moments import load_adam_moments

    if chunk is not None:
        monkeypatch.setattr(selector_update, "REPLAY_CHUNK", chunk)
    rng = np.random.default_rng(0)
    shape = (2, 5)
    selector = {"s": rng.standard_normal(shape).astype(np.float32)}
    moments = {} if first_round else {
        "exp_avg/s": rng.standard_normal(shape).astype(np.float32) * 0.1,
        "exp_avg_sq/s": rng.random(shape).astype(np.float32) * 0.01, "step": np.asarray(3.0, np.float32)}
    current = _current(selector, moments)
    gradients = {"a": rng.standard_normal(shape).astype(np.float32),
                 "b": rng.standard_normal(shape).astype(np.float32)}
    replayed = _round(current, "client_adam_on_server", lr=1e-2)
    faithful = _round(current, "client_adam", lr=1e-2)
    for client, gradient in gradients.items():
        weight = 1 + LABELS[client]
        assert _accept(replayed, client, SelectorUpload(gradient={"s": gradient}), weight) is None
        param = torch.nn.Parameter(torch.from_numpy(selector["s"].copy()))
        optimizer = torch.optim.Adam([param], lr=1e-2)
        load_adam_moments(optimizer, [("s", param)], moments)
        param.grad = torch.from_numpy(gradient.copy())
        optimizer.step()
        upload = SelectorUpload(diff={"s": param.detach().numpy() - selector["s"]},
                                moments=extract_adam_moments(optimizer, [("s", param)]))
        assert _accept(faithful, client, upload, weight) is None
    expected, got = faithful.result(), replayed.result()
    np.testing.assert_allclose(got.selector["s"], expected.selector["s"], rtol=1e-5, atol=1e-7)
    assert got.selector_moments.keys() == expected.selector_moments.keys()
    assert all(a.dtype == np.float32 for a in [*got.selector.values(), *got.selector_moments.values()])
    for key in expected.selector_moments:
        np.testing.assert_allclose(got.selector_moments[key], expected.selector_moments[key], rtol=1e-5, atol=1e-9)
