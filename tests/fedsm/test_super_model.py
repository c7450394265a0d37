import numpy as np
import torch

from fedsm.core.super_model import GLOBAL_MODEL, SuperModel, route_by_confidence


def test_route_by_confidence():
    probabilities = np.array([[0.95, 0.03, 0.02], [0.5, 0.4, 0.1], [0.0, 0.05, 0.95], [0.9, 0.1, 0.0]])
    np.testing.assert_array_equal(route_by_confidence(probabilities, 0.9), [0, GLOBAL_MODEL, 2, GLOBAL_MODEL])
    assert (route_by_confidence(np.eye(3), 1.0) == GLOBAL_MODEL).all()


class _Constant(torch.nn.Module):
    def __init__(self, value):
        super().__init__()
        self.value = value

    def forward(self, x):
        return torch.full_like(x[:, :1], self.value)


class _Selector(torch.nn.Module):
    def forward(self, x):  # image mean decides the site: confident for site 1 when bright
        bright = x.mean(dim=(1, 2, 3)) > 0.5
        logits = torch.zeros(x.shape[0], 2)
        logits[bright, 1] = 10.0
        return logits


def test_super_model_routes_each_image_to_its_model():
    model = SuperModel(_Selector(), _Constant(-1.0), [_Constant(0.0), _Constant(1.0)], threshold=0.9)
    images = torch.cat([torch.zeros(1, 1, 4, 4), torch.ones(1, 1, 4, 4)])
    out = model(images)
    assert out.shape == (2, 1, 4, 4)
    assert (out[0] == -1.0).all() and (out[1] == 1.0).all()
