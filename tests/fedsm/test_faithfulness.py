"""FedSM as published, written out by hand, against this project's real pieces on a tiny federation.

The project side runs the client's local training (`train_segmentation`, the mode's `client_step`),
the task and update messages through NVFlare's serialization, and the server's `RoundAggregator`.
The reference side is plain torch and NumPy (no `fedsm` import): Dice-loss UNet steps per batch;
the selector's cross-entropy summed over every image, one Adam step per local epoch, each client
keeping its own Adam step count and loading the averaged `exp_avg` / `exp_avg_sq`; the server's
step-weighted means of the global and selector differences and of the moments, and SoftPull.
"""

import numpy as np
import pytest
import torch
from nvflare.apis.shareable import Shareable
from published_fedsm import dice_loss, soft_pull
from torch import nn

from fedsm.core.model_set import ModelSet
from fedsm.core.round_aggregation import RoundAggregator
from fedsm.core.selector_update import expected_moment_shapes
from fedsm.core.update_checks import shapes_of
from fedsm.flare.messages import (GLOBAL, PERSONALIZED, SELECTOR, SELECTOR_MOMENTS, FedSMTask, FedSMUpdate,
                                  update_shapes)
from fedsm.models.weights import get_weights, set_weights, weight_difference
from fedsm.runtime import Compute
from fedsm.selector_training import selector_training
from fedsm.tags import METRIC_TAGS
from fedsm.training import train_segmentation

LABELS = {"client_a": 0, "client_b": 1, "client_c": 2}
BATCH_SIZES = {"client_a": [2], "client_b": [2, 1], "client_c": [1, 2, 2]}  # unequal sites, mixed batches
LAM, LR, LR_SELECT, EPOCHS = 0.7, 1e-2, 1e-2, 2
CPU = Compute(torch.device("cpu"))
TOLERANCE = 1e-6


def tiny_unet() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 1, 1))


def tiny_selector() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 4 * 4, len(LABELS)))


def site_batches(client: str) -> list[dict[str, torch.Tensor]]:
    """The site's training batches, the same every epoch; each site has its own intensity and mask."""
    generator = torch.Generator().manual_seed(10 + LABELS[client])
    batches = []
    for size in BATCH_SIZES[client]:
        images = torch.rand(size, 1, 6, 6, generator=generator) + 0.3 * LABELS[client]
        labels = (torch.rand(size, 1, 6, 6, generator=generator) > 0.6 - 0.1 * LABELS[client]).float()
        batches.append({"image": images, "label": labels})
    return batches


def initial_models() -> ModelSet:
    unet = get_weights(tiny_unet())
    return ModelSet(global_model=unet, selector=get_weights(tiny_selector()), selector_moments={},
                    personalized={client: {k: v.copy() for k, v in unet.items()} for client in LABELS})


# ---------------------------------------------------------------------------------------------
# The project: learner steps, messages over the wire, the server's round aggregation
# ---------------------------------------------------------------------------------------------

def over_the_wire(shareable: Shareable) -> Shareable:
    return Shareable.from_bytes(shareable.to_bytes())


class ProjectClient:
    """What `fedsm.flare.learner` does with a train task; the three optimizers live across rounds."""

    def __init__(self, client: str):
        self.client, self.batches = client, site_batches(client)
        self.models = {"global": tiny_unet(), "personalized": tiny_unet(), "selector": tiny_selector()}
        self.optimizers = {kind: torch.optim.Adam(model.parameters(), lr=LR_SELECT if kind == "selector" else LR)
                           for kind, model in self.models.items()}
        unet, selector = shapes_of(get_weights(self.models["global"])), get_weights(self.models["selector"])
        self.task_shapes = {GLOBAL: unet, PERSONALIZED: unet, SELECTOR: shapes_of(selector),
                            SELECTOR_MOMENTS: expected_moment_shapes(selector)}

    def train(self, shareable: Shareable, mode: str, selector_epochs: int) -> Shareable:
        task = FedSMTask.from_shareable(shareable, self.task_shapes)
        for kind, weights in (("global", task.global_model), ("personalized", task.personalized),
                              ("selector", task.selector)):
            set_weights(self.models[kind], weights)
        _, steps = train_segmentation(self.models["global"], self.optimizers["global"], self.batches, EPOCHS, CPU)
        train_segmentation(self.models["personalized"], self.optimizers["personalized"], self.batches, EPOCHS, CPU)
        upload, _ = selector_training(mode).client_step(self.models["selector"], self.optimizers["selector"],
                                                        self.batches, task.label, selector_epochs, CPU, task.selector_moments)
        reply = FedSMUpdate(round=task.round, label=task.label, metrics={tag: 0.5 for tag in METRIC_TAGS},
                            num_validation=1, seconds={})
        reply.add_training(weight_difference(get_weights(self.models["global"]), task.global_model),
                           get_weights(self.models["personalized"]), upload, steps)
        return reply.to_shareable()


def project_round(models: ModelSet, clients: dict[str, ProjectClient], mode: str, selector_epochs: int) -> ModelSet:
    training = selector_training(mode)
    aggregator = RoundAggregator(models, LABELS, LAM,
                                 training.server_update(models.selector, models.selector_moments, LR_SELECT))
    shapes = update_shapes(shapes_of(models.global_model), training.upload_shapes(models.selector))
    for client, label in LABELS.items():
        task = FedSMTask(round=models.next_round, num_rounds=10, label=label, num_clients=len(LABELS),
                         global_model=models.global_model, personalized=models.personalized[client],
                         selector=models.selector,
                         selector_moments=models.selector_moments if training.clients_step_adam else None)
        reply = clients[client].train(over_the_wire(task.to_shareable()), mode, selector_epochs)
        update = FedSMUpdate.from_shareable(over_the_wire(reply), shapes)
        assert aggregator.accept(client, update.label, update.global_diff, update.personalized, update.selector,
                                 update.steps) is None
    return aggregator.result()


def run_project(mode: str, rounds: int, selector_epochs: int) -> list[ModelSet]:
    clients = {client: ProjectClient(client) for client in LABELS}
    history = [initial_models()]
    for _ in range(rounds):
        history.append(project_round(history[-1], clients, mode, selector_epochs))
    return history


# ---------------------------------------------------------------------------------------------
# The reference, by hand
# ---------------------------------------------------------------------------------------------

def state(model: nn.Module) -> dict[str, np.ndarray]:
    return {name: tensor.detach().numpy().copy() for name, tensor in model.state_dict().items()}


def load(model: nn.Module, weights: dict[str, np.ndarray]) -> None:
    model.load_state_dict({name: torch.tensor(array) for name, array in weights.items()})


class ReferenceClient:
    """One site of the published algorithm; its optimizers (the selector's step count too) persist."""

    def __init__(self, client: str):
        self.label, self.batches = LABELS[client], site_batches(client)
        self.unets = {"global": tiny_unet(), "personalized": tiny_unet()}
        self.selector = tiny_selector()
        self.unet_optimizers = {kind: torch.optim.Adam(model.parameters(), lr=LR) for kind, model in self.unets.items()}
        self.selector_optimizer = torch.optim.Adam(self.selector.parameters(), lr=LR_SELECT)

    def train(self, global_model, personalized, selector, moments, selector_epochs):
        """Returns (UNet steps, global difference, personalized weights, selector difference, moments)."""
        load(self.unets["global"], global_model)
        load(self.unets["personalized"], personalized)
        load(self.selector, selector)
        steps = 0
        for kind, unet in self.unets.items():
            steps = 0
            for _ in range(EPOCHS):
                for batch in self.batches:
                    self.unet_optimizers[kind].zero_grad()
                    dice_loss(unet(batch["image"]), batch["label"]).backward()
                    self.unet_optimizers[kind].step()
                    steps += 1
        for name, param in self.selector.named_parameters():  # the synced moments; the step stays local
            if moments:
                for kind in ("exp_avg", "exp_avg_sq"):
                    self.selector_optimizer.state[param][kind] = torch.tensor(moments[f"{kind}/{name}"],
                                                                              dtype=param.dtype)
        for _ in range(selector_epochs):
            self.selector_optimizer.zero_grad()
            for batch in self.batches:
                for image in batch["image"]:  # cross-entropy of each image, summed
                    logits = self.selector(image[None])
                    (-torch.log_softmax(logits, dim=1)[0, self.label]).backward()
            self.selector_optimizer.step()
        trained_moments = {}
        for name, param in self.selector.named_parameters():
            for kind in ("exp_avg", "exp_avg_sq"):
                trained_moments[f"{kind}/{name}"] = self.selector_optimizer.state[param][kind].numpy().copy()
            trained_moments["step"] = np.float32(self.selector_optimizer.state[param]["step"])
        global_diff = {k: v - global_model[k] for k, v in state(self.unets["global"]).items()}
        selector_diff = {k: v - selector[k] for k, v in state(self.selector).items()}
        return steps, global_diff, state(self.unets["personalized"]), selector_diff, trained_moments


def weighted_mean(arrays: list[dict[str, np.ndarray]], weights: list[int]) -> dict[str, np.ndarray]:
    return {name: sum(w * a[name].astype(np.float64) for a, w in zip(arrays, weights)) / sum(weights)
            for name in arrays[0]}


def reference_round(models: dict, clients: dict[str, ReferenceClient], selector_epochs: int) -> dict:
    results = {client: clients[client].train(models["global"], models["personalized"][client], models["selector"],
                                              models["moments"], selector_epochs) for client in LABELS}
    steps = [result[0] for result in results.values()]
    global_diff = weighted_mean([result[1] for result in results.values()], steps)
    selector_diff = weighted_mean([result[3] for result in results.values()], steps)
    return {"global": {k: models["global"][k] + v for k, v in global_diff.items()},
            "selector": {k: models["selector"][k] + v for k, v in selector_diff.items()},
            "moments": weighted_mean([result[4] for result in results.values()], steps),
            "personalized": soft_pull({client: result[2] for client, result in results.items()}, LAM)}


# ---------------------------------------------------------------------------------------------
# The tests
# ---------------------------------------------------------------------------------------------

def assert_same_models(got: ModelSet, expected: ModelSet | dict) -> None:
    """Every array of the two model sets agrees within TOLERANCE."""
    if isinstance(expected, ModelSet):
        expected = {"global": expected.global_model, "selector": expected.selector,
                    "moments": expected.selector_moments, "personalized": expected.personalized}
    pairs = [("global", got.global_model, expected["global"]), ("selector", got.selector, expected["selector"]),
             ("moments", got.selector_moments, expected["moments"]),
             *((f"personalized {c}", got.personalized[c], expected["personalized"][c]) for c in LABELS)]
    for part, ours, theirs in pairs:
        assert sorted(ours) == sorted(theirs), part
        for name in ours:
            np.testing.assert_allclose(ours[name], theirs[name], rtol=0, atol=TOLERANCE, err_msg=f"{part}: {name}")


@pytest.mark.parametrize("selector_epochs", [1, 2])
def test_client_adam_rounds_equal_the_published_algorithm_written_by_hand(selector_epochs):
    """Three rounds: round 0 starts without moments, later rounds load the averaged ones."""
    history = run_project("client_adam", rounds=3, selector_epochs=selector_epochs)
    clients = {client: ReferenceClient(client) for client in LABELS}
    start = history[0]
    expected = {"global": start.global_model, "selector": start.selector, "moments": {},
                "personalized": start.personalized}
    for round_number, got in enumerate(history[1:]):
        expected = reference_round(expected, clients, selector_epochs)
        assert_same_models(got, expected)
        assert float(got.selector_moments["step"]) == (round_number + 1) * selector_epochs
    assert not np.allclose(history[-1].personalized["client_a"]["0.weight"],
                           history[-1].personalized["client_b"]["0.weight"])


def test_the_tiny_federation_tells_the_published_rules_from_look_alikes():
    """Unweighted means, or a selector loss averaged per image (Adam's `exp_avg_sq` scales with the
    square of the loss), would move the first round's models by far more than the tolerance."""
    first = run_project("client_adam", rounds=1, selector_epochs=1)[1]
    start = initial_models()
    clients = {client: ReferenceClient(client) for client in LABELS}
    results = [clients[client].train(start.global_model, start.personalized[client], start.selector, {}, 1)
               for client in LABELS]
    steps = [result[0] for result in results]
    assert len(set(steps)) == len(LABELS)
    unweighted = weighted_mean([result[1] for result in results], [1] * len(LABELS))
    assert max(np.abs(first.global_model[k] - start.global_model[k] - unweighted[k]).max() for k in unweighted) \
        > 100 * TOLERANCE
    images = [sum(BATCH_SIZES[client]) for client in LABELS]
    per_image = weighted_mean([{"v": result[4]["exp_avg_sq/3.bias"] / n ** 2} for result, n in zip(results, images)],
                              steps)["v"]
    assert np.abs(first.selector_moments["exp_avg_sq/3.bias"] - per_image).max() > 100 * TOLERANCE


def test_client_adam_on_server_gives_the_model_set_of_client_adam_over_five_rounds():
    on_clients = run_project("client_adam", rounds=5, selector_epochs=1)
    on_server = run_project("client_adam_on_server", rounds=5, selector_epochs=1)
    assert_same_models(on_server[-1], on_clients[-1])
    assert not np.allclose(on_server[-1].selector["3.weight"], on_server[0].selector["3.weight"], atol=1e-3)
