"""Local training and validation of the three FedSM models (plain PyTorch, no NVFlare)."""

from collections.abc import Iterable, Mapping

import torch
from monai.losses import DiceLoss
from torch import nn

from .core.dice import binarize, dice_per_image, mean_dice
from .core.model_kinds import GLOBAL, PERSONALIZED, SELECTOR
from .core.selector_update import adam_update
from .models.networks import build_models
from .runtime import Compute


def build_local_models(train_config: Mapping, compute: Compute) -> tuple[dict[str, nn.Module],
                                                                          dict[str, torch.optim.Optimizer]]:
    """A client's three models (`build_models`) on `compute`'s device and memory format, and the Adam
    optimizer of each: the UNets at `learning_rate`, the selector at `learning_rate_select`."""
    models = {kind: compute.place(model) for kind, model in build_models(train_config).items()}
    rates = {GLOBAL: train_config["learning_rate"], PERSONALIZED: train_config["learning_rate"],
             SELECTOR: train_config["learning_rate_select"]}
    optimizers = {kind: torch.optim.Adam(model.parameters(), lr=rates[kind]) for kind, model in models.items()}
    return models, optimizers


def _batches(loader: Iterable, compute: Compute):
    for batch in loader:
        yield compute.place(batch["image"]), batch["label"].to(compute.device)


def _forward(model: nn.Module, images: torch.Tensor, compute: Compute) -> torch.Tensor:
    """`model(images)` under `compute`'s autocast, returned in at least float32 (for losses and metrics)."""
    with compute.autocast():
        output = model(images)
    return output.to(torch.promote_types(output.dtype, torch.float32))


def train_segmentation(
    model: nn.Module, optimizer: torch.optim.Optimizer, loader: Iterable, epochs: int, compute: Compute,
) -> tuple[float, int]:
    """Train a UNet with sigmoid Dice loss; returns (mean loss, number of optimizer steps)."""
    loss_function = DiceLoss(sigmoid=True)
    model.train()
    total, steps = 0.0, 0
    for _ in range(epochs):
        for images, labels in _batches(loader, compute):
            optimizer.zero_grad(set_to_none=True)
            loss = loss_function(_forward(model, images, compute), labels)
            loss.backward()
            optimizer.step()
            total += loss.item()
            steps += 1
    return total / max(steps, 1), steps


def selector_full_batch_gradient(model: nn.Module, loader: Iterable, label: int, compute: Compute) -> float:
    """Leave in `model`'s `.grad` the cross-entropy gradient summed over all images of `loader` (every
    image carries this site's `label`), as the reference accumulates it; returns the mean loss.

    The sum, not the mean: with synced Adam moments the scale decides how much each site weighs in
    the averaged `exp_avg` (about N_i) and `exp_avg_sq` (about N_i^2)."""
    loss_function = nn.CrossEntropyLoss(reduction="sum")
    model.train()
    model.zero_grad(set_to_none=True)
    total, count = 0.0, 0
    for images, _ in _batches(loader, compute):
        targets = torch.full((images.shape[0],), label, dtype=torch.long, device=compute.device)
        loss = loss_function(_forward(model, images, compute), targets)
        loss.backward()
        total += loss.item()
        count += images.shape[0]
    if count == 0:
        raise ValueError("the selector has no training images")
    return total / count


def train_selector_full_batch(
    model: nn.Module,
    optimizer: torch.optim.Adam,
    loader: Iterable,
    label: int,
    epochs: int,
    compute: Compute,
) -> tuple[dict[str, torch.Tensor], float]:
    """Full-batch selector training: per epoch, the full-batch gradient, then `selector_adam_step`.
    Returns the weight change over all epochs by parameter name, and the mean loss."""
    change: dict[str, torch.Tensor] = {}
    losses = []
    for _ in range(epochs):
        losses.append(selector_full_batch_gradient(model, loader, label, compute))
        selector_adam_step(model, optimizer, change)
    return change, sum(losses) / len(losses)


@torch.no_grad()
def selector_adam_step(model: nn.Module, optimizer: torch.optim.Adam, change: dict[str, torch.Tensor]) -> None:
    """One Adam step of `model` from its `.grad`, on `optimizer`'s state and `lr` (`adam_update`:
    torch.optim.Adam's math), adding each parameter's update to `change` (by name).

    The update is built in the gradient's own buffer, which then leaves the parameter; so the weights
    a round started from need not be held to upload its weight difference.
    """
    lr = optimizer.param_groups[0]["lr"]
    for name, param in model.named_parameters():
        state = optimizer.state[param]
        previous = (state["exp_avg"], state["exp_avg_sq"]) if state else None
        if not state:
            state.update(step=torch.tensor(0.0), exp_avg=torch.empty_like(param), exp_avg_sq=torch.empty_like(param))
        state["step"] += 1
        update = adam_update(param.grad, previous, float(state["step"]), lr, (state["exp_avg"], state["exp_avg_sq"]),
                             param.grad)
        param.add_(update)
        change[name] = change[name].add_(update) if name in change else update
        param.grad = None


@torch.no_grad()
def validate_segmentation(model: nn.Module, loader: Iterable, compute: Compute) -> float:
    """Mean foreground Dice over the images of `loader` (images with an empty mask have none)."""
    model.eval()
    scores = [dice_per_image(binarize(_forward(model, images, compute)), labels)
              for images, labels in _batches(loader, compute)]
    return mean_dice(torch.cat(scores)) if scores else float("nan")


@torch.no_grad()
def validate_selector(model: nn.Module, loader: Iterable, label: int, compute: Compute) -> tuple[float, float]:
    """Accuracy (share of the images of `loader` assigned to `label`) and confidence (mean softmax
    probability of `label`, which the super model's threshold acts on)."""
    model.eval()
    hits, confidence, count = 0, 0.0, 0
    for images, _ in _batches(loader, compute):
        logits = _forward(model, images, compute)
        hits += (logits.argmax(dim=1) == label).sum().item()
        confidence += torch.softmax(logits, dim=1)[:, label].sum().item()
        count += images.shape[0]
    return (hits / count, confidence / count) if count else (float("nan"), float("nan"))
