import numpy as np
import pytest
import torch

from fedsm.core.adam_moments import average_adam_moments, extract_adam_moments, load_adam_moments


def _trained(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(2):
        optimizer.zero_grad()
        model(torch.randn(5, 4)).pow(2).sum().backward()
        optimizer.step()
    return model, optimizer


def test_moments_keyed_by_name_survive_round_trip_into_fresh_optimizer():
    model, optimizer = _trained()
    moments = extract_adam_moments(optimizer, model.named_parameters())
    assert "exp_avg/0.weight" in moments and "exp_avg_sq/2.bias" in moments and float(moments["step"]) == 2.0

    fresh_model, _ = _trained(seed=1)
    fresh_model.load_state_dict(model.state_dict())
    fresh = torch.optim.Adam(fresh_model.parameters(), lr=1e-2)
    # reversed order: matching must be by name, not position
    load_adam_moments(fresh, reversed(list(fresh_model.named_parameters())), moments)
    for name, param in fresh_model.named_parameters():
        np.testing.assert_array_equal(fresh.state[param]["exp_avg"].numpy(), moments[f"exp_avg/{name}"])
        np.testing.assert_array_equal(fresh.state[param]["exp_avg_sq"].numpy(), moments[f"exp_avg_sq/{name}"])

    # the next step from the loaded state equals the next step of the original optimizer
    batch = torch.randn(5, 4)
    for m, o in ((model, optimizer), (fresh_model, fresh)):
        o.zero_grad()
        m(batch).pow(2).sum().backward()
        o.step()
    for (name, a), (_, b) in zip(model.named_parameters(), fresh_model.named_parameters()):
        torch.testing.assert_close(a, b, msg=name)


def test_moments_handed_over_share_memory_and_others_are_copied():
    model, optimizer = _trained()
    moments = {key: np.array(value) for key, value in extract_adam_moments(optimizer, model.named_parameters()).items()}
    fresh = torch.optim.Adam(model.parameters(), lr=1e-2)
    load_adam_moments(fresh, model.named_parameters(), moments, share_memory=True)
    first = next(iter(model.parameters()))
    assert np.shares_memory(fresh.state[first]["exp_avg"].numpy(), moments["exp_avg/0.weight"])
    read_only = {key: value.copy() for key, value in moments.items()}
    for value in read_only.values():
        value.flags.writeable = False  # as some arrays arrive from NVFlare: never written through
    load_adam_moments(fresh, model.named_parameters(), read_only, share_memory=True)
    assert not np.shares_memory(fresh.state[first]["exp_avg"].numpy(), read_only["exp_avg/0.weight"])


def test_empty_moments_reset_optimizer_and_mismatch_is_named():
    model, optimizer = _trained()
    load_adam_moments(optimizer, model.named_parameters(), {})
    assert len(optimizer.state) == 0
    model2, optimizer2 = _trained()
    moments = extract_adam_moments(optimizer2, model2.named_parameters())
    del moments["exp_avg/0.weight"]
    with pytest.raises(KeyError, match="exp_avg/0.weight"):
        load_adam_moments(optimizer, model.named_parameters(), moments)


def test_average_adam_moments_hand_computed_and_float32():
    a = {"exp_avg/w": np.array([1.0, 2.0], np.float32), "exp_avg_sq/w": np.array([1.0, 1.0], np.float32),
         "step": np.asarray(3.0, np.float32)}
    b = {"exp_avg/w": np.array([3.0, 6.0], np.float32), "exp_avg_sq/w": np.array([5.0, 9.0], np.float32),
         "step": np.asarray(3.0, np.float32)}
    mean = average_adam_moments([(a, 1), (b, 3)])
    np.testing.assert_allclose(mean["exp_avg/w"], [2.5, 5.0])
    np.testing.assert_allclose(mean["exp_avg_sq/w"], [4.0, 7.0])
    assert float(mean["step"]) == 3.0
    assert all(v.dtype == np.float32 for v in mean.values())
