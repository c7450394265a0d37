"""The selector-training modes: one object per mode with its client step, upload and server rule."""

import copy

import numpy as np
import pytest
import torch
from torch import nn

from fedsm.core.adam_moments import extract_adam_moments, load_adam_moments
from fedsm.core.model_set import ModelSet
from fedsm.core.round_aggregation import RoundAggregator
from fedsm.core.selector_update import expected_moment_shapes
from fedsm.flare.dxo_codec import MessageError
from fedsm.flare.messages import FedSMUpdate, update_shapes
from fedsm.models.weights import get_weights
from fedsm.runtime import Compute
from fedsm.selector_training import SELECTOR_TRAININGS, selector_training
from fedsm.tags import METRIC_TAGS
from fedsm.training import selector_adam_step, selector_full_batch_gradient

GRADIENT_MODES = ["client_adam_on_server", "server_adam"]
LABEL, LR, CPU = 1, 1e-2, Compute(torch.device("cpu"))


def _selector(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(4, 3))


def _loader():
    generator = torch.Generator().manual_seed(1)
    return [{"image": torch.randn(size, 1, 2, 2, generator=generator), "label": torch.zeros(size, 1, 2, 2)}
            for size in (2, 3)]


def _copies(weights):
    return {name: np.array(array, copy=True) for name, array in weights.items()}


def _full_batch_loss(model):
    """Cross-entropy summed over every image of `_loader()` (the reference's full-batch loss), all labelled
    `LABEL` (independent of training.py)."""
    images = torch.cat([batch["image"] for batch in _loader()])
    return nn.functional.cross_entropy(model(images), torch.full((len(images),), LABEL), reduction="sum")


def _num_images():
    return sum(len(batch["image"]) for batch in _loader())


def _prior_moments(model):
    """Adam moments after two steps, as a client receives them averaged from the server."""
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    for _ in range(2):
        _full_batch_loss(model).backward()
        optimizer.step()
        optimizer.zero_grad()
    return _copies(extract_adam_moments(optimizer, model.named_parameters()))


def _client_step(mode, model, moments, epochs=1):
    received = _copies(get_weights(model))
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    upload, loss = selector_training(mode).client_step(model, optimizer, _loader(), LABEL, epochs, CPU,
                                                       None if moments is None else _copies(moments))
    return upload, loss, received, optimizer


def test_modes_are_registered_by_name_and_an_unknown_one_lists_them():
    assert sorted(SELECTOR_TRAININGS) == ["client_adam", "client_adam_on_server", "server_adam"]
    assert all(selector_training(name) is mode and mode.name == name for name, mode in SELECTOR_TRAININGS.items())
    assert [name for name, mode in SELECTOR_TRAININGS.items() if mode.clients_step_adam] == ["client_adam"]
    with pytest.raises(ValueError, match=r"one of \['client_adam', 'client_adam_on_server', 'server_adam'\], got 'sgd'"):
        selector_training("sgd")


@pytest.mark.parametrize("mode, epochs, accepted", [
    ("client_adam", 1, True), ("client_adam", 3, True),
    *[(mode, epochs, epochs == 1) for mode in GRADIENT_MODES for epochs in (1, 2)],
])
def test_gradient_modes_take_exactly_one_selector_epoch(mode, epochs, accepted):
    reason = selector_training(mode).check_config(epochs)
    assert (reason is None) == accepted
    assert accepted or (mode in reason and "'selector_local_epochs' to 1" in reason)


def test_upload_shapes_name_what_each_mode_sends():
    selector = {"fc.weight": np.zeros((3, 4), np.float32), "fc.bias": np.zeros(3, np.float32)}
    shapes = {"fc.weight": (3, 4), "fc.bias": (3,)}
    assert selector_training("client_adam").upload_shapes(selector) == {
        "diff": shapes, "moments": {"step": (), "exp_avg/fc.weight": (3, 4), "exp_avg_sq/fc.weight": (3, 4),
                                    "exp_avg/fc.bias": (3,), "exp_avg_sq/fc.bias": (3,)}}
    for mode in GRADIENT_MODES:
        assert selector_training(mode).upload_shapes(selector) == {"gradient": shapes}


@pytest.mark.parametrize("with_moments", [False, True])
def test_client_adam_step_uploads_the_trained_difference_and_moments_by_name(with_moments):
    moments = _prior_moments(_selector(seed=2)) if with_moments else None
    upload, loss, received, optimizer = _client_step("client_adam", _selector(), moments, epochs=2)
    # the same two full-batch Adam steps, taken here from the received weights and moments
    reference = _selector()
    reference_optimizer = torch.optim.Adam(reference.parameters(), lr=LR)
    load_adam_moments(reference_optimizer, reference.named_parameters(), moments or {})
    losses = []
    for _ in range(2):
        reference_optimizer.zero_grad()
        full_batch = _full_batch_loss(reference)
        full_batch.backward()
        reference_optimizer.step()
        losses.append(full_batch.item())
    trained = get_weights(reference)
    assert upload.gradient is None and sorted(upload.diff) == sorted(received)
    assert not optimizer.state  # the upload alone holds the moments: freed once sent, not kept for the next round
    for name, array in upload.diff.items():
        np.testing.assert_allclose(array, trained[name] - received[name], rtol=1e-5, atol=1e-7)
    expected = extract_adam_moments(reference_optimizer, reference.named_parameters())
    assert sorted(upload.moments) == sorted(expected_moment_shapes(received)) == sorted(expected)
    for key, array in expected.items():
        np.testing.assert_allclose(upload.moments[key], array, rtol=1e-5, atol=1e-9)
    assert float(upload.moments["step"]) == (4.0 if with_moments else 2.0)
    assert loss == pytest.approx(np.mean(losses) / _num_images(), rel=1e-5)  # reported per image



def test_client_adam_builds_its_weight_difference_in_the_gradient_buffers():
    """The client holds no copy of the weights it started from: each parameter's update is written over
    its gradient, whose buffer then leaves the parameter."""
    model = _selector()
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    selector_full_batch_gradient(model, _loader(), LABEL, CPU)
    gradient_buffers = {name: param.grad.data_ptr() for name, param in model.named_parameters()}
    before = {name: param.detach().clone() for name, param in model.named_parameters()}
    change = {}
    selector_adam_step(model, optimizer, change)
    for name, param in model.named_parameters():
        assert param.grad is None and change[name].data_ptr() == gradient_buffers[name]
        torch.testing.assert_close(change[name], param.detach() - before[name], rtol=1e-5, atol=1e-8)
        assert change[name].abs().max() > 0

@pytest.mark.parametrize("mode", GRADIENT_MODES)
def test_gradient_modes_upload_the_full_batch_gradient_and_take_no_step(mode):
    model = _selector()
    upload, loss, received, optimizer = _client_step(mode, model, _prior_moments(_selector(seed=2)))
    reference = _selector()
    full_batch = _full_batch_loss(reference)
    gradients = torch.autograd.grad(full_batch, list(reference.parameters()))
    assert upload.diff is None and upload.moments is None and not optimizer.state
    assert all(param.grad is None for param in model.parameters())  # the upload alone holds the gradient
    assert sorted(upload.gradient) == sorted(received)
    for (name, _), gradient in zip(reference.named_parameters(), gradients):
        np.testing.assert_allclose(upload.gradient[name], gradient.numpy(), rtol=1e-5, atol=1e-7)
        np.testing.assert_array_equal(get_weights(model)[name], received[name])
    assert loss == pytest.approx(full_batch.item() / _num_images(), rel=1e-5)  # reported per image


@pytest.mark.parametrize("mode", sorted(SELECTOR_TRAININGS))
def test_a_client_step_travels_as_an_update_into_its_server_rule(mode):
    """Client step, message, decoding against the mode's upload shapes, server rule: one round."""
    training = selector_training(mode)
    selector = _copies(get_weights(_selector()))
    unet = {"w": np.zeros((2, 2), np.float32)}
    upload, *_ = _client_step(mode, _selector(), None)
    update = FedSMUpdate(round=0, label=LABEL, metrics={tag: 0.5 for tag in METRIC_TAGS}, num_validation=1,
                         seconds={})
    update.add_training(dict(unet), dict(unet), upload, steps=2)
    shareable = update.to_shareable()
    received = FedSMUpdate.from_shareable(shareable, update_shapes({"w": (2, 2)}, training.upload_shapes(selector)))
    current = ModelSet(global_model=dict(unet), selector=selector, selector_moments={}, personalized={})
    round_ = RoundAggregator(current, {"site": LABEL}, 0.7, training.server_update(selector, {}, LR))
    assert round_.accept("site", received.label, received.global_diff, received.personalized, received.selector,
                         received.steps) is None
    models = round_.result()
    assert sorted(models.selector_moments) == sorted(expected_moment_shapes(selector))
    for name, array in selector.items():
        assert models.selector[name].shape == array.shape and not np.allclose(models.selector[name], array)
    other = "server_adam" if training.clients_step_adam else "client_adam"
    with pytest.raises(MessageError, match="selector"):
        FedSMUpdate.from_shareable(shareable,
                                   update_shapes({"w": (2, 2)}, selector_training(other).upload_shapes(selector)))
