"""MONAI transforms and data loaders of the 2D prostate slices."""

import numpy as np
import torch
from monai.data import CacheDataset, DataLoader
from monai.transforms import AsDiscreted, Compose, EnsureChannelFirstd, EnsureTyped, Lambdad, Resized
from PIL import Image

from .datalist import grey_full_scale

KEYS = ("image", "label")


def read_image(file: str) -> np.ndarray:
    """A grey PNG as float32 in [0, 1]: 8-bit values divided by 255, 16-bit values by 65535.

    A fixed full scale (not each image's own maximum) keeps every slice of a case on one intensity
    scale, as the 8-bit slices of `data_preparation` are; a 16-bit PNG holding the 8-bit values
    times 257 loads exactly like the 8-bit one. Axes are (x, y), as MONAI's PILReader gives them.
    """
    with Image.open(file) as image:
        scale = grey_full_scale(image.mode, file)
        pixels = np.asarray(image, dtype=np.float32) / scale
    return np.ascontiguousarray(pixels.T)


def read_mask(file: str) -> np.ndarray:
    """A mask PNG as float32 0/1: any non-zero value is foreground, so {0, 255} and {0, 1} masks
    (the two encodings the start-up check accepts) load alike. Axes (x, y) as `read_image`."""
    with Image.open(file) as image:
        foreground = np.asarray(image) > 0
    return np.ascontiguousarray(foreground.T.astype(np.float32))


def slice_transforms(image_size: int) -> Compose:
    """PNG pair to tensors: intensity to 0..1 (`read_image`), bilinear resize, mask thresholded at 0.5.

    The resize aligns corner pixels (`align_corners=True`) as the reference does; training,
    validation and the test-only evaluation all load through this transform.
    """
    return Compose(
        [
            Lambdad(keys="image", func=read_image),
            Lambdad(keys="label", func=read_mask),
            EnsureChannelFirstd(keys=KEYS, channel_dim="no_channel"),
            Resized(keys=KEYS, spatial_size=(image_size, image_size), mode="bilinear", align_corners=True,
                    anti_aliasing=False),
            AsDiscreted(keys="label", threshold=0.5),
            EnsureTyped(keys=KEYS, dtype=torch.float32, track_meta=False),
        ]
    )


def make_dataset(items: list[dict[str, str]], image_size: int, cache_rate: float = 0.0,
                 num_workers: int = 0) -> CacheDataset:
    """The transformed slices of the datalist `items`; `cache_rate` of them are transformed once and kept."""
    return CacheDataset(items, transform=slice_transforms(image_size), cache_rate=cache_rate,
                        num_workers=num_workers or None, progress=False)


def batches(dataset: CacheDataset, batch_size: int, shuffle: bool, num_workers: int = 0, seed: int = 0) -> DataLoader:
    """A loader of `{"image", "label"}` batches over `dataset` (several loaders may share one dataset)."""
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers, generator=generator)


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
    return batches(make_dataset(items, image_size, cache_rate, num_workers), batch_size, shuffle, num_workers, seed)
