import numpy as np

from fedsm.core.super_model import GLOBAL_MODEL, route_by_confidence


def test_route_by_confidence():
    probabilities = np.array([[0.95, 0.03, 0.02], [0.5, 0.4, 0.1], [0.0, 0.05, 0.95], [0.9, 0.1, 0.0]])
    np.testing.assert_array_equal(route_by_confidence(probabilities, 0.9), [0, GLOBAL_MODEL, 2, GLOBAL_MODEL])
    assert (route_by_confidence(np.eye(3), 1.0) == GLOBAL_MODEL).all()
