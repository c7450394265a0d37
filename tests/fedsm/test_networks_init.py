"""The VGG11 selector is initialized like the reference (torchvision's VGG), not with PyTorch's defaults."""

import math

import pytest
import torch
from torch import nn

from fedsm.models.networks import VGG11, build_selector

NUM_CLASSES = 3


@pytest.fixture(scope="module")
def vgg() -> VGG11:
    torch.manual_seed(0)
    return build_selector("vgg11", NUM_CLASSES)


def _expected_std(layer: nn.Module) -> float:
    """Kaiming-normal (fan_out, ReLU) for convolutions, 0.01 for linear layers."""
    if isinstance(layer, nn.Conv2d):
        fan_out = layer.out_channels * math.prod(layer.kernel_size)
        return math.sqrt(2.0 / fan_out)
    return 0.01


def _weighted_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name, layer) for name, layer in model.named_modules() if isinstance(layer, (nn.Conv2d, nn.Linear))]


def test_every_parameter_is_a_conv_or_linear_weight_or_bias(vgg):
    covered = {f"{name}.{kind}" for name, _ in _weighted_layers(vgg) for kind in ("weight", "bias")}
    assert {name for name, _ in vgg.named_parameters()} == covered
    assert len(_weighted_layers(vgg)) == 8 + 3


def test_weights_have_the_reference_std_and_zero_mean(vgg):
    for name, layer in _weighted_layers(vgg):
        weight = layer.weight.detach().double()
        expected = _expected_std(layer)
        assert weight.std().item() == pytest.approx(expected, rel=0.1), name
        assert abs(weight.mean().item()) < 0.1 * expected, name


def test_first_conv_is_three_times_narrower_than_pytorch_default(vgg):
    first = vgg.features[0]
    assert first.weight.std().item() == pytest.approx(math.sqrt(2.0 / (64 * 9)), rel=0.1)  # 0.059
    default = nn.Conv2d(1, 64, kernel_size=3, padding=1).weight.std().item()  # 1/sqrt(3 * 9) = 0.19
    assert default > 2.5 * first.weight.std().item()


def test_weights_are_normal_not_uniform(vgg):
    """About 68.3% of a normal sample lies within one std of the mean; 57.7% of a uniform one."""
    for name, layer in _weighted_layers(vgg):
        weight = layer.weight.detach()
        if weight.numel() < 100_000:
            continue
        within = (weight.abs() < _expected_std(layer)).double().mean().item()
        assert within == pytest.approx(0.6827, abs=0.01), name


def test_biases_are_exactly_zero(vgg):
    for name, layer in _weighted_layers(vgg):
        assert torch.count_nonzero(layer.bias).item() == 0, name


def test_init_is_seeded_and_the_model_runs(vgg):
    torch.manual_seed(0)
    again = VGG11(NUM_CLASSES)
    for (name, mine), theirs in zip(vgg.named_parameters(), again.parameters()):
        assert torch.equal(mine, theirs), name
        assert mine.device.type == "cpu" and mine.requires_grad, name
    vgg.eval()
    with torch.no_grad():
        logits = vgg(torch.rand(2, 1, 32, 32))
    assert logits.shape == (2, NUM_CLASSES) and torch.isfinite(logits).all()
