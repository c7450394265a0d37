"""A picture of the test evaluation: a few test slices with the ground truth and the contours of the
super model's and the global model's segmentation, written where the images are (a site writes its
own; images never leave it)."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from .core.dice import binarize  # noqa: E402
from .core.super_model import GLOBAL_MODEL  # noqa: E402
from .evaluation import SuperModel, choose_routes  # noqa: E402
from .io.atomic import atomic_path  # noqa: E402

CONTOURS = {"ground truth": "lime", "super model": "red", "global model": "deepskyblue"}


@torch.no_grad()
def segmentations(images: torch.Tensor, model: SuperModel, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Super-model and global-model masks (N, H, W) of a batch, routed as in `evaluate_batch`."""
    probabilities = torch.softmax(model.selector(images).float(), dim=1).cpu().numpy()
    routes = choose_routes(probabilities, threshold, list(model.personalized))
    global_masks = binarize(model.global_model(images))
    super_masks = global_masks.clone()
    for row, route in enumerate(routes):
        if route != GLOBAL_MODEL:
            super_masks[row] = binarize(model.personalized[int(route)](images[row:row + 1]))[0]
    return super_masks[:, 0].cpu().numpy(), global_masks[:, 0].cpu().numpy()


def draw_test_slices(images: np.ndarray, targets: np.ndarray, super_masks: np.ndarray, global_masks: np.ndarray,
                     title: str, path: Path) -> Path:
    """One panel per slice (grey image, contours of each mask); written atomically as a PNG."""
    count = len(images)
    figure, axes = plt.subplots(1, count, figsize=(max(3 * count, 7), 3.6), squeeze=False)
    for axis, image, target, super_mask, global_mask in zip(axes[0], images, targets, super_masks, global_masks):
        axis.imshow(image, cmap="gray")
        for mask, color in zip((target, super_mask, global_mask), CONTOURS.values()):
            if mask.any() and not mask.all():
                axis.contour(mask, levels=[0.5], colors=color, linewidths=1.2)
        axis.set_axis_off()
    handles = [plt.Line2D([], [], color=color, label=label) for label, color in CONTOURS.items()]
    figure.legend(handles=handles, loc="lower center", ncol=3, frameon=False)
    figure.suptitle(title)
    figure.tight_layout(rect=(0, 0.08, 1, 0.95))
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100)
    plt.close(figure)
    return path


def draw_first_slices(loader, model: SuperModel, threshold: float, device: torch.device, count: int, title: str,
                      path: Path) -> Path:
    """`draw_test_slices` of the first `count` images of `loader` (`image`, `label` batches)."""
    images, targets = [], []
    for batch in loader:
        images.append(batch["image"])
        targets.append(batch["label"])
        if sum(len(part) for part in images) >= count:
            break
    images, targets = torch.cat(images)[:count], torch.cat(targets)[:count]
    super_masks, global_masks = segmentations(images.to(device), model, threshold)
    return draw_test_slices(images[:, 0].numpy(), targets[:, 0].numpy() > 0.5, super_masks > 0.5, global_masks > 0.5,
                            title, path)
