"""Weighted averaging of named arrays, streamed one contribution at a time."""

from collections.abc import Iterable, Mapping

import numpy as np


class WeightedAverage:
    """Running weighted sum of named arrays: `add()` each contribution as it arrives, then `result()`.

    Only one accumulator per name is held, never every contribution. Each name is averaged over the
    contributions that hold it (a filter such as NVFlare's `ExcludeVars` may drop names), as NVFlare's
    `WeightedAggregationHelper` does. Arrays keep their dtype: the weight is applied as a Python
    float, so float32 inputs are summed and returned as float32.
    """

    def __init__(self) -> None:
        self._sums: dict[str, np.ndarray] = {}
        self._weights: dict[str, float] = {}

    def add(self, arrays: Mapping[str, np.ndarray], weight: float) -> None:
        """Add one contribution; a name's shape must match its earlier contributions."""
        weight = float(weight)
        if not weight > 0.0:
            raise ValueError(f"contribution weight must be > 0, got {weight}")
        for name, array in arrays.items():
            array = np.asarray(array)
            total = self._sums.get(name)
            if total is None:
                if not np.issubdtype(array.dtype, np.floating):
                    raise ValueError(f"'{name}': dtype {array.dtype} is not a float dtype")
                self._sums[name] = np.multiply(array, weight, out=np.empty(array.shape, array.dtype))
                self._weights[name] = 0.0
            elif total.shape != array.shape or total.dtype != array.dtype:
                raise ValueError(f"'{name}': {array.dtype}{array.shape} differs from the first contribution's "
                                 f"{total.dtype}{total.shape}")
            else:
                np.add(total, np.multiply(array, weight, dtype=total.dtype), out=total)
            self._weights[name] += weight

    def result(self) -> dict[str, np.ndarray]:
        """The weighted mean of every name added (none: empty), each in its input dtype; resets the average."""
        mean = {name: np.divide(total, self._weights[name], out=total) for name, total in self._sums.items()}
        self._sums, self._weights = {}, {}
        return mean


def weighted_average(contributions: Iterable[tuple[Mapping[str, np.ndarray], float]]) -> dict[str, np.ndarray]:
    """Weighted mean of `(arrays, weight)` pairs, name by name."""
    average = WeightedAverage()
    for arrays, weight in contributions:
        average.add(arrays, weight)
    return average.result()
