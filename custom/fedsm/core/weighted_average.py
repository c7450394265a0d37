"""Weighted averaging of named arrays, streamed one contribution at a time."""

from collections.abc import Iterable, Mapping

import numpy as np


class WeightedAverage:
    """Running weighted sum of named arrays: `add()` each contribution as it arrives, then `result()`.

    Only one accumulator per name is held, never every contribution. Arrays keep their dtype: the
    weight is applied as a Python float, so float32 inputs are summed and returned as float32.
    """

    def __init__(self) -> None:
        self._sums: dict[str, np.ndarray] = {}
        self._dtypes: dict[str, np.dtype] = {}
        self._total_weight = 0.0
        self.count = 0

    def add(self, arrays: Mapping[str, np.ndarray], weight: float) -> None:
        """Add one contribution; every contribution must have the same names and shapes."""
        weight = float(weight)
        if not weight > 0.0:
            raise ValueError(f"contribution weight must be > 0, got {weight}")
        if self._sums and arrays.keys() != self._sums.keys():
            missing = sorted(self._sums.keys() - arrays.keys())
            extra = sorted(arrays.keys() - self._sums.keys())
            raise KeyError(f"contribution names differ from the first one: missing {missing}, unexpected {extra}")
        for name, array in arrays.items():
            array = np.asarray(array)
            total = self._sums.get(name)
            if total is None:
                self._dtypes[name] = array.dtype
                acc_dtype = array.dtype if np.issubdtype(array.dtype, np.floating) else np.float64
                self._sums[name] = np.multiply(array, weight, out=np.empty(array.shape, acc_dtype))
            elif total.shape != array.shape:
                raise ValueError(f"'{name}': shape {array.shape} differs from the first contribution's {total.shape}")
            else:
                np.add(total, np.multiply(array, weight, dtype=total.dtype), out=total)
        self._total_weight += weight
        self.count += 1

    @property
    def total_weight(self) -> float:
        return self._total_weight

    def result(self) -> dict[str, np.ndarray]:
        """The weighted mean of all contributions, each array in its input dtype."""
        if not self.count:
            raise ValueError("no contribution was added")
        mean = {}
        for name, total in self._sums.items():
            total /= self._total_weight
            dtype = self._dtypes[name]
            mean[name] = total if total.dtype == dtype else np.rint(total).astype(dtype)
        self._sums = {}
        self.count = 0
        self._total_weight = 0.0
        return mean


def weighted_average(contributions: Iterable[tuple[Mapping[str, np.ndarray], float]]) -> dict[str, np.ndarray]:
    """Weighted mean of `(arrays, weight)` pairs, name by name."""
    average = WeightedAverage()
    for arrays, weight in contributions:
        average.add(arrays, weight)
    return average.result()
