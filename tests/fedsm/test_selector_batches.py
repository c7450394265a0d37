"""`selector_batch_size` changes speed, not results: the full-batch selector gradient is a sum over
images, and validation needs no gradient."""

import pytest
import torch

from fedsm.models.networks import VGG11, build_selector, build_unet
from fedsm.runtime import Compute
from fedsm.training import selector_full_batch_gradient, validate_segmentation, validate_selector

CPU = Compute(torch.device("cpu"))


def _loader(images, masks, batch_size):
    return [{"image": images[i:i + batch_size], "label": masks[i:i + batch_size]}
            for i in range(0, len(images), batch_size)]


def _slices(count=20, size=32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(count, 1, size, size, generator=generator)
    masks = (torch.rand(count, 1, size, size, generator=generator) > 0.7).float()
    return images, masks


def _gradient(model, loader):
    selector_full_batch_gradient(model, loader, 1, CPU)
    return {name: param.grad.clone() for name, param in model.named_parameters()}


def _vgg_without_dropout():
    """VGG11 in float64: oneDNN picks other float32 convolution kernels for batches of 1 and 16, whose
    rounding differs by ~1e-3 relative on the first layer; in float64 only the math is compared."""
    model = VGG11(3).double()
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0  # the same (no) dropout masks at both batch sizes
    return model


@pytest.mark.parametrize("build", [lambda: build_selector("light", 3), _vgg_without_dropout], ids=["light", "vgg11"])
def test_selector_gradient_from_batches_of_1_equals_batches_of_16(build):
    """The light selector sums over several batches (16 + 1 images). VGG11 has to show only that none of
    its layers depends on the batch, which one short batch (3 images) against 3 of 1 does: each image
    more costs a pass through its 103M-parameter classifier in float64."""
    torch.manual_seed(0)
    model = build()
    images, masks = _slices(count=3, size=32) if isinstance(model, VGG11) else _slices(count=17, size=48)
    images = images.to(next(model.parameters()).dtype)
    single = _gradient(model, _loader(images, masks, 1))
    batched = _gradient(model, _loader(images, masks, 16))
    for name, gradient in single.items():
        scale = gradient.abs().max().clamp(min=1e-12)
        assert ((batched[name] - gradient).abs().max() / scale).item() < 1e-5, name
    assert any(g.abs().max() > 0 for g in single.values())


def test_validation_metrics_do_not_depend_on_the_batch_size():
    torch.manual_seed(0)
    unet, selector = build_unet(), build_selector("light", 3)
    images, masks = _slices(count=18, size=32)
    for batch_size in (1, 16):
        loader = _loader(images, masks, batch_size)
        dice = validate_segmentation(unet, loader, CPU)
        accuracy, confidence = validate_selector(selector, loader, 1, CPU)
        if batch_size == 1:
            expected = (dice, accuracy, confidence)
        else:
            assert (dice, accuracy) == pytest.approx(expected[:2], abs=1e-6)
            assert confidence == pytest.approx(expected[2], rel=1e-5)
