"""The server's rules for the selector update, one per selector-training mode (see
`fedsm.selector_training`, where each rule is paired with its client step).

`ClientAdamSelector` (FedSM as published): the step-weighted means of the clients' weight differences
and Adam moments. `ClientAdamOnServerSelector`: the same math from each client's full-batch gradient,
replaying its Adam step on the server. `ServerAdamSelector`: one Adam step on the weighted mean
gradient (centralized full-batch Adam). Each is streamed: `add()` one client's `SelectorUpload` as it
arrives, then `result()`. A parameter no client sent (a filter excluded it) keeps its weights and
moments.
"""

import dataclasses
import math
from collections.abc import Mapping

import numpy as np
import torch

from .adam_moments import MOMENT_KINDS, STEP_KEY, moment_key
from .model_set import Weights
from .weighted_average import WeightedAverage



@dataclasses.dataclass
class SelectorUpload:
    """A client's selector contribution: weight difference and Adam moments, or full-batch gradient."""

    diff: Weights | None = None
    moments: Weights | None = None
    gradient: Weights | None = None


def expected_moment_shapes(selector: Mapping[str, np.ndarray]) -> dict[str, tuple[int, ...]]:
    """The keys and shapes a client's selector Adam moments must have."""
    shapes: dict[str, tuple[int, ...]] = {STEP_KEY: ()}
    for name, weights in selector.items():
        for kind in MOMENT_KINDS:
            shapes[moment_key(kind, name)] = weights.shape
    return shapes


ADAM_BETAS, ADAM_EPS = (0.9, 0.999), 1e-8  # torch.optim.Adam's defaults, as FedSM trains its selector
REPLAY_CHUNK = 1 << 22  # elements of a client's Adam step replayed at a time on the server (16 MiB in float32)


def adam_update(grad: torch.Tensor, previous: tuple[torch.Tensor, torch.Tensor] | None, step: float, lr: float,
                moments_out: tuple[torch.Tensor, torch.Tensor], update_out: torch.Tensor,
                betas: tuple[float, float] = ADAM_BETAS, eps: float = ADAM_EPS) -> torch.Tensor:
    """One Adam step of one parameter, as `torch.optim.Adam` with default options: the new `exp_avg`
    and `exp_avg_sq` from `previous` (None before the first step) and `grad`, written to
    `moments_out`, and the weight update (new minus old weights) written to `update_out`, returned.

    Written out in place so that every caller holds no more than it must: `moments_out` may be
    `previous` (the moments step in place) and `update_out` may be `grad` or `moments_out[1]` (both are
    read before it is written). `step` counts this step (1 for the first).
    """
    beta1, beta2 = betas
    exp_avg, exp_avg_sq = moments_out
    if previous is None:
        torch.mul(grad, 1.0 - beta1, out=exp_avg)
        torch.mul(grad, grad, out=exp_avg_sq).mul_(1.0 - beta2)
    else:
        torch.mul(previous[0], beta1, out=exp_avg).add_(grad, alpha=1.0 - beta1)
        torch.mul(previous[1], beta2, out=exp_avg_sq).addcmul_(grad, grad, value=1.0 - beta2)
    bias1, bias2_sqrt = 1.0 - beta1**step, math.sqrt(1.0 - beta2**step)
    denom = torch.sqrt(exp_avg_sq, out=update_out).div_(bias2_sqrt).add_(eps)
    return torch.div(exp_avg, denom, out=update_out).mul_(-lr / bias1)


def adam_step(weights: Weights, gradient: Weights, moments: Weights, lr: float) -> tuple[Weights, Weights]:
    """One Adam step (`adam_update`) of every parameter in `gradient`, keeping dtypes.

    `moments` holds `exp_avg/<name>`, `exp_avg_sq/<name>` and `step` (empty: a fresh optimizer).
    Returns new weights and new moments; the inputs are not modified.
    """
    step = float(moments.get(STEP_KEY, 0.0)) + 1.0
    new_weights, new_moments = {}, {STEP_KEY: np.asarray(step, dtype=np.float32)}
    for name, grad in gradient.items():
        weights_now = _as_tensor(weights[name])
        exp_avg, exp_avg_sq = torch.empty_like(weights_now), torch.empty_like(weights_now)
        update = adam_update(_as_tensor(grad).to(weights_now.dtype), _previous_moments(moments, name), step, lr,
                             (exp_avg, exp_avg_sq), torch.empty_like(weights_now))
        new_weights[name] = update.add_(weights_now).numpy()
        new_moments[moment_key("exp_avg", name)] = exp_avg.numpy()
        new_moments[moment_key("exp_avg_sq", name)] = exp_avg_sq.numpy()
    return new_weights, new_moments


class ClientAdamSelector:
    """Step-weighted means of the clients' selector weight differences and Adam moments."""

    def __init__(self, selector: Weights, moments: Weights) -> None:
        self.selector, self.moments = selector, moments
        self._diff, self._moments = WeightedAverage(), WeightedAverage()

    def add(self, upload: SelectorUpload, weight: float) -> None:
        self._diff.add(upload.diff, weight)
        self._moments.add(upload.moments, weight)

    def result(self) -> tuple[Weights, Weights]:
        mean_diff = self._diff.result()
        for name, diff in mean_diff.items():
            np.add(diff, self.selector[name], out=diff)
        return complete(mean_diff, self._moments.result(), self.selector, self.moments)


class ClientAdamOnServerSelector:
    """`client_adam` computed on the server: each client's Adam step is replayed from its gradient as it
    arrives, in place and with torch's multithreaded fused operations.

    Only the weight difference needs each client's full step. The mean moments are linear in the
    gradients: mean `exp_avg` = b1 * `exp_avg` + (1 - b1) * mean g, and mean `exp_avg_sq` likewise with
    g * g, so the running sums of g and g * g are enough for them. A client's own moments are needed
    only for its update, so the step is replayed `REPLAY_CHUNK` elements at a time in a small scratch.
    """

    def __init__(self, selector: Weights, moments: Weights, lr: float) -> None:
        self.selector, self.moments, self.lr = selector, moments, lr
        self.step = float(moments.get(STEP_KEY, 0.0)) + 1.0
        # per parameter: torch dtype and the previous moments as tensors (None in round 0), made once
        self._dtypes = {name: _as_tensor(weights).dtype for name, weights in selector.items()}
        self._previous = {name: _previous_moments(moments, name) for name in selector}
        self._sums: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}  # diff, g, g * g
        self._scratch: dict[torch.dtype, tuple[torch.Tensor, torch.Tensor]] = {}  # one client's moments, a chunk
        self._weights: dict[str, float] = {}

    def add(self, upload: SelectorUpload, weight: float) -> None:
        weight = float(weight)
        if not weight > 0.0:
            raise ValueError(f"contribution weight must be > 0, got {weight}")
        for name, gradient in upload.gradient.items():
            grad = _as_tensor(gradient).to(self._dtypes[name])
            if name not in self._sums:
                self._sums[name] = tuple(torch.zeros(grad.shape, dtype=grad.dtype) for _ in range(3))
            if grad.dtype not in self._scratch:
                self._scratch[grad.dtype] = (torch.empty(REPLAY_CHUNK, dtype=grad.dtype),
                                             torch.empty(REPLAY_CHUNK, dtype=grad.dtype))
            flat_grad = grad.reshape(-1)
            flat_sums = [total.reshape(-1) for total in self._sums[name]]
            flat_previous = [moment.reshape(-1) for moment in self._previous[name] or ()]  # empty in round 0
            for start in range(0, flat_grad.numel(), REPLAY_CHUNK):
                chunk = slice(start, start + REPLAY_CHUNK)
                g = flat_grad[chunk]
                sum_diff, sum_grad, sum_grad_sq = (total[chunk] for total in flat_sums)
                previous = tuple(moment[chunk] for moment in flat_previous) or None
                exp_avg, exp_avg_sq = (scratch[:g.numel()] for scratch in self._scratch[grad.dtype])
                sum_grad.add_(g, alpha=weight)
                sum_grad_sq.addcmul_(g, g, value=weight)
                update = adam_update(g, previous, self.step, self.lr, (exp_avg, exp_avg_sq), exp_avg_sq)
                sum_diff.add_(update, alpha=weight)
            self._weights[name] = self._weights.get(name, 0.0) + weight

    def result(self) -> tuple[Weights, Weights]:
        self._scratch = {}
        selector, moments = {}, {STEP_KEY: np.asarray(self.step, dtype=np.float32)}
        for name, (sum_diff, sum_grad, sum_grad_sq) in self._sums.items():
            total_weight = self._weights[name]
            selector[name] = sum_diff.div_(total_weight).add_(_as_tensor(self.selector[name])).numpy()
            previous = self._previous[name] or (None, None)
            for kind, total, beta, before in zip(MOMENT_KINDS, (sum_grad, sum_grad_sq), ADAM_BETAS, previous):
                mean = total.div_(total_weight).mul_(1.0 - beta)
                if before is not None:
                    mean.add_(before, alpha=beta)
                moments[moment_key(kind, name)] = mean.numpy()
        self._sums, self._weights = {}, {}
        return complete(selector, moments, self.selector, self.moments)


def _previous_moments(moments: Weights, name: str) -> tuple[torch.Tensor, torch.Tensor] | None:
    """`exp_avg` and `exp_avg_sq` of parameter `name` as tensors, or None before the first step."""
    if moment_key("exp_avg", name) not in moments:
        return None
    return tuple(_as_tensor(moments[moment_key(kind, name)]) for kind in MOMENT_KINDS)


def _as_tensor(array: np.ndarray) -> torch.Tensor:
    """A tensor over the array's memory (a copy only where torch cannot share it: a read-only array, or
    negative strides)."""
    array = np.asarray(array)
    shareable = array.flags.writeable and all(stride >= 0 for stride in array.strides)
    return torch.from_numpy(array) if shareable else torch.tensor(array)


class ServerAdamSelector:
    """Weighted mean of the clients' full-batch selector gradients, then one Adam step on the server."""

    def __init__(self, selector: Weights, moments: Weights, lr: float) -> None:
        self.selector, self.moments, self.lr = selector, moments, lr
        self._gradient = WeightedAverage()

    def add(self, upload: SelectorUpload, weight: float) -> None:
        self._gradient.add(upload.gradient, weight)

    def result(self) -> tuple[Weights, Weights]:
        selector, moments = adam_step(self.selector, self._gradient.result(), self.moments, self.lr)
        return complete(selector, moments, self.selector, self.moments)


def complete(selector: Weights, moments: Weights, previous: Weights, previous_moments: Weights
             ) -> tuple[Weights, Weights]:
    """The new selector and moments with every parameter no client sent kept as it was (moments of a
    parameter never stepped start at zero, so the optimizer state stays complete)."""
    for name, weights in previous.items():
        if name in selector:
            continue
        selector[name] = weights
        for kind in MOMENT_KINDS:
            key = moment_key(kind, name)
            moments[key] = previous_moments[key] if key in previous_moments else np.zeros_like(weights)
    return selector, moments
