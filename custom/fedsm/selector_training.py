"""The selector-training modes: each is one object holding its client step and its server rule.

| mode | the client sends | the server | math |
|---|---|---|---|
| `client_adam` | weight difference + both Adam moments | averages all three, sends the mean moments back | FedSM as published |
| `client_adam_on_server` | full-batch gradient | replays each client's Adam step from the mean moments, then averages | the same as `client_adam` |
| `server_adam` | full-batch gradient | one Adam step on the mean gradient | centralized full-batch Adam |

A client's moments reveal its gradient anyway (`exp_avg_i = b1 * exp_avg + (1 - b1) * g_i`), so the
gradient modes disclose nothing more and move a third of the selector bytes. The learner, the
workflow and the config ask these objects; nothing else branches on a mode's name.
"""

from collections.abc import Iterable

import numpy as np
import torch
from torch import nn

from .core.adam_moments import extract_adam_moments, load_adam_moments
from .core.model_set import Weights
from .core.selector_update import (ClientAdamOnServerSelector, ClientAdamSelector, SelectorUpload,
                                   ServerAdamSelector, expected_moment_shapes)
from .runtime import Compute
from .training import selector_full_batch_gradient, train_selector_full_batch


class SelectorTraining:
    """One selector-training mode. `clients_step_adam`: clients keep the Adam step (and receive the
    averaged moments with every train task)."""

    name = ""
    clients_step_adam = False
    server_rule = None  # the core rule class: (selector, moments, lr) -> add(upload, weight) / result()

    def check_config(self, selector_local_epochs: int) -> str | None:
        """Why this mode cannot run with the config, or None."""
        if not self.clients_step_adam and selector_local_epochs != 1:
            return f"'{self.name}' takes one selector step per round; set 'selector_local_epochs' to 1"
        return None

    def upload_shapes(self, selector: Weights) -> dict[str, dict[str, tuple]]:
        """Shapes of what a client uploads, keyed by `SelectorUpload` field."""
        shapes = {name: np.shape(weights) for name, weights in selector.items()}
        if self.clients_step_adam:
            return {"diff": shapes, "moments": expected_moment_shapes(selector)}
        return {"gradient": shapes}

    def server_update(self, selector: Weights, moments: Weights, lr: float):
        """The round's streaming accumulator of client uploads."""
        if self.clients_step_adam:
            return self.server_rule(selector, moments)
        return self.server_rule(selector, moments, lr)

    def client_step(self, model: nn.Module, optimizer: torch.optim.Adam, loader: Iterable, label: int,
                    epochs: int, compute: Compute, moments: Weights | None) -> tuple[SelectorUpload, float]:
        """Train the selector on this site (received weights already loaded into `model`); returns what
        to upload and the mean loss. No mode needs the received weights once they are loaded: where
        clients step Adam, the weight difference is the steps' updates, taken from `optimizer`'s state
        after `moments` (the server's averaged moments) replace it."""
        # The upload's arrays keep their buffers alive until it is sent; the model and optimizer let go of
        # them, so that they are not still held beside the next round's received selector and moments.
        if not self.clients_step_adam:
            loss = selector_full_batch_gradient(model, loader, label, compute)
            gradient = {name: param.grad.detach().cpu().numpy() for name, param in model.named_parameters()}
            model.zero_grad(set_to_none=True)
            return SelectorUpload(gradient=gradient), loss
        # the received moments are handed over to the optimizer, not copied
        load_adam_moments(optimizer, model.named_parameters(), moments or {}, share_memory=True)
        change, loss = train_selector_full_batch(model, optimizer, loader, label, epochs, compute)
        upload = SelectorUpload(diff={name: tensor.cpu().numpy() for name, tensor in change.items()},
                                moments=extract_adam_moments(optimizer, model.named_parameters()))
        optimizer.state.clear()
        return upload, loss


class ClientAdam(SelectorTraining):
    name, clients_step_adam, server_rule = "client_adam", True, ClientAdamSelector


class ClientAdamOnServer(SelectorTraining):
    name, server_rule = "client_adam_on_server", ClientAdamOnServerSelector


class ServerAdam(SelectorTraining):
    name, server_rule = "server_adam", ServerAdamSelector


SELECTOR_TRAININGS = {mode.name: mode for mode in (ClientAdam(), ClientAdamOnServer(), ServerAdam())}


def selector_training(name: str) -> SelectorTraining:
    """The mode named by `selector_training` in config_train.json."""
    if name not in SELECTOR_TRAININGS:
        raise ValueError(f"'selector_training' must be one of {sorted(SELECTOR_TRAININGS)}, got '{name}'")
    return SELECTOR_TRAININGS[name]

