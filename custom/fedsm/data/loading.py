"""MONAI transforms and data loaders of the 2D prostate slices."""

import torch
from monai.data import CacheDataset, DataLoader
from monai.transforms import (
    AsDiscreted,
    Compose,
    EnsureChannelFirstd,
    EnsureTyped,
    LoadImaged,
    Resized,
    ScaleIntensityRanged,
)

KEYS = ("image", "label")


def slice_transforms(image_size: int) -> Compose:
    """PNG pair to tensors: intensity 0..255 to 0..1, bilinear resize, mask thresholded at 0.5.

    The resize aligns corner pixels (`align_corners=True`) as the reference does; training,
    validation and the test-only evaluation all load through this transform.
    """
    return Compose(
        [
            LoadImaged(keys=KEYS, reader="PILReader", image_only=True),
            EnsureChannelFirstd(keys=KEYS, channel_dim="no_channel"),
            ScaleIntensityRanged(keys=KEYS, a_min=0, a_max=255, b_min=0.0, b_max=1.0),
            Resized(keys=KEYS, spatial_size=(image_size, image_size), mode="bilinear", align_corners=True,
                    anti_aliasing=False),
            AsDiscreted(keys="label", threshold=0.5),
            EnsureTyped(keys=KEYS, dtype=torch.float32, track_meta=False),
        ]
    )


def make_loader(
    items: list[dict[str, str]],
    image_size: int,
    batch_size: int,
    shuffle: bool,
    cache_rate: float = 0.0,
    num_workers: int = 0,
    seed: int = 0,
) -> DataLoader:
    """A loader of `{"image", "label"}` batches over the datalist `items`."""
    dataset = CacheDataset(
        items, transform=slice_transforms(image_size), cache_rate=cache_rate, num_workers=num_workers or None,
        progress=False,
    )
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers, generator=generator)
