"""Every model architecture of the job, built in one place from the training config."""

from collections.abc import Mapping

import torch
from monai.networks.nets import UNet
from torch import nn

from ..core.model_kinds import GLOBAL, PERSONALIZED, SELECTOR

SELECTORS = ("vgg11", "light")

_VGG11_LAYERS = (64, "pool", 128, "pool", 256, 256, "pool", 512, 512, "pool", 512, 512, "pool")


def build_unet() -> nn.Module:
    """The 2D segmentation UNet of the global and personalized models (1 channel in, 1 logit out)."""
    return UNet(
        spatial_dims=2,
        in_channels=1,
        out_channels=1,
        channels=(16, 32, 64, 128, 256),
        strides=(2, 2, 2, 2),
        num_res_units=2,
    )


class VGG11(nn.Module):
    """VGG11 without batch norm, one input channel: the reference selector (128.8M parameters).

    Initialized as torchvision's VGG and the reference: convolutions Kaiming-normal (fan_out, ReLU),
    linear layers N(0, 0.01), all biases zero.
    """

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        # Made on the meta device, then initialized once: PyTorch's default init of the 103M-parameter
        # first linear layer would take as long again, only to be overwritten.
        with torch.device("meta"):
            layers: list[nn.Module] = []
            channels = 1
            for layer in _VGG11_LAYERS:
                if layer == "pool":
                    layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                else:
                    layers += [nn.Conv2d(channels, layer, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
                    channels = layer
            self.features = nn.Sequential(*layers)
            self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
            self.classifier = nn.Sequential(
                nn.Linear(512 * 7 * 7, 4096),
                nn.ReLU(inplace=True),
                nn.Dropout(),
                nn.Linear(4096, 4096),
                nn.ReLU(inplace=True),
                nn.Dropout(),
                nn.Linear(4096, num_classes),
            )
        self.to_empty(device=torch.get_default_device())
        self.apply(_init_vgg_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def _init_vgg_layer(module: nn.Module) -> None:
    if isinstance(module, nn.Conv2d):
        nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, 0.0, 0.01)
        nn.init.zeros_(module.bias)


class LightSelector(nn.Module):
    """A small site classifier for CPU use (0.25M parameters).

    Five strided convolutions with GroupNorm (independent of the batch, so full-batch federated
    training needs no running statistics), then global average and max pooling, then one linear
    layer. The fifth stage widens the receptive field to the whole field of view at 96x96, so that
    slices with little anatomy are still told apart by the scanner's framing.
    """

    def __init__(self, num_classes: int, widths: tuple[int, ...] = (16, 32, 64, 128, 128)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 1
        for width in widths:
            layers += [
                nn.Conv2d(channels, width, kernel_size=3, stride=2, padding=1),
                nn.GroupNorm(min(8, width // 4), width),
                nn.LeakyReLU(0.1, inplace=True),
            ]
            channels = width
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(2 * channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.features(x)
        pooled = torch.cat([features.mean(dim=(2, 3)), features.amax(dim=(2, 3))], dim=1)
        return self.classifier(pooled)


def build_selector(name: str, num_classes: int) -> nn.Module:
    """The selector classifier named in the config (`vgg11` or `light`)."""
    if num_classes < 1:
        raise ValueError(f"select_num_classes must be >= 1, got {num_classes}")
    if name == "vgg11":
        return VGG11(num_classes)
    if name == "light":
        return LightSelector(num_classes)
    raise ValueError(f"unknown selector '{name}' in config_train.json; choose one of {SELECTORS}")


def build_models(train_config: Mapping) -> dict[str, nn.Module]:
    """The three model kinds of FedSM from `config_train.json`: `global`, `personalized`, `selector`."""
    return {
        GLOBAL: build_unet(),
        PERSONALIZED: build_unet(),
        SELECTOR: build_selector(train_config["selector"], int(train_config["select_num_classes"])),
    }
