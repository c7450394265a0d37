"""The shared slice transform resizes on the reference's grid: bilinear with aligned corners."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from fedsm.data.loading import slice_transforms

SOURCE, TARGET = 5, 8


@pytest.fixture
def pair(tmp_path) -> dict[str, str]:
    """A 5x5 PNG with a gradient and a bright corner, and a mask of its lower right 3x2 block."""
    image = np.add.outer(np.arange(SOURCE) * 40, np.arange(SOURCE) * 7).astype(np.uint8)
    image[0, 0] = 255
    mask = np.zeros((SOURCE, SOURCE), dtype=np.uint8)
    mask[2:, 3:] = 255
    files = {"image": tmp_path / "img.png", "label": tmp_path / "mask.png"}
    Image.fromarray(image).save(files["image"])
    Image.fromarray(mask).save(files["label"])
    return {key: str(path) for key, path in files.items()}


def _resize(tensor: torch.Tensor, align_corners: bool) -> torch.Tensor:
    return F.interpolate(tensor[None], size=(TARGET, TARGET), mode="bilinear", align_corners=align_corners)[0]


def test_resize_equals_bilinear_interpolation_with_aligned_corners(pair):
    # at the source size the resize is the identity, so this is the loaded, scaled slice
    original = slice_transforms(SOURCE)(pair)
    resized = slice_transforms(TARGET)(pair)
    assert resized["image"].shape == (1, TARGET, TARGET)
    expected = _resize(original["image"], align_corners=True)
    torch.testing.assert_close(resized["image"], expected, atol=1e-6, rtol=0)
    # corner pixels keep their values only when corners are aligned
    assert resized["image"][0, 0, 0].item() == pytest.approx(1.0)
    not_aligned = _resize(original["image"], align_corners=False)
    assert (resized["image"] - not_aligned).abs().max().item() > 0.05
    assert torch.equal(resized["label"], (_resize(original["label"], align_corners=True) >= 0.5).float())
