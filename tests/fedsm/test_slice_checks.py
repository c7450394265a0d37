"""The start-up check of image/mask PNGs and how 16-bit images and 0/1 masks load, on real files."""

import json
import logging

import numpy as np
import pytest
import torch
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, ScaleIntensityRanged
from PIL import Image

from fedsm.config import TrainConfig
from fedsm.data.datalist import DataError, check_images_readable
from fedsm.data.loading import slice_transforms
from fedsm.data.site_data import load_site_data

H, W = 6, 9  # not square, so a swapped axis shows


def _image8() -> np.ndarray:
    return np.add.outer(np.arange(H) * 30, np.arange(W) * 5).astype(np.uint8)


def _mask(high: int = 255) -> np.ndarray:
    mask = np.zeros((H, W), dtype=np.uint8)
    mask[2:5, 3:7] = high
    return mask


def _save(folder, name: str, pixels: np.ndarray, mode: str | None = None) -> str:
    path = folder / name
    image = Image.fromarray(pixels) if mode is None else Image.fromarray(pixels).convert(mode)
    image.save(path)
    return str(path)


def _pair(folder, name: str, image: np.ndarray | None = None, mask: np.ndarray | None = None,
          image_mode: str | None = None, mask_mode: str | None = None) -> dict:
    return {"image": _save(folder, f"{name}_img.png", _image8() if image is None else image, image_mode),
            "label": _save(folder, f"{name}_mask.png", _mask() if mask is None else mask, mask_mode)}


def test_good_8_and_16_bit_pairs_pass_without_warnings(tmp_path):
    items = [_pair(tmp_path, "a"), _pair(tmp_path, "b", image=_image8().astype(np.uint16) * 257)]
    assert Image.open(items[1]["image"]).mode == "I;16"
    assert check_images_readable(items, "client_s.json") == []


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "LA", "P"])
def test_colour_images_are_refused_naming_the_file(tmp_path, mode):
    items = [_pair(tmp_path, "a"), _pair(tmp_path, "b", image_mode=mode)]
    with pytest.raises(DataError, match=rf"b_img.png: image mode {mode}; expected 8-bit or 16-bit grey"):
        check_images_readable(items)


def test_colour_mask_and_bad_mask_values_are_refused_naming_the_file(tmp_path):
    with pytest.raises(DataError, match="a_mask.png: mask mode RGB; expected a single-channel"):
        check_images_readable([_pair(tmp_path, "a", mask_mode="RGB")])
    soft = _mask()
    soft[2, 3] = 128  # an anti-aliased edge
    with pytest.raises(DataError, match=r"b_mask.png: mask values 0, 128, 255; expected \{0, 255\}"):
        check_images_readable([_pair(tmp_path, "b", mask=soft)])


def test_image_and_mask_of_different_sizes_name_both_files(tmp_path):
    item = _pair(tmp_path, "a", mask=np.zeros((H, W + 1), np.uint8))
    with pytest.raises(DataError, match=r"image .*a_img.png is 9x6 but its mask .*a_mask.png is 10x6"):
        check_images_readable([item])


def test_0_1_and_empty_masks_pass_with_warnings_naming_the_datalist(tmp_path):
    items = [_pair(tmp_path, "a"), _pair(tmp_path, "b", mask=_mask(1)), _pair(tmp_path, "c", mask=_mask(0))]
    warnings = check_images_readable(items, "/d/client_s.json")
    assert len(warnings) == 2
    assert warnings[0].startswith("/d/client_s.json: 1 of 3 masks use values {0, 1}") and "b_mask.png" in warnings[0]
    assert warnings[1].startswith("/d/client_s.json: 1 of 3 masks are empty") and "c_mask.png" in warnings[1]


def test_a_set_of_only_empty_masks_is_refused(tmp_path):
    items = [_pair(tmp_path, name, mask=_mask(0)) for name in "ab"]
    with pytest.raises(DataError, match=r"client_s.json: all 2 masks are empty \(first: .*a_mask.png\)"):
        check_images_readable(items, "client_s.json")


def test_8_bit_slices_load_as_with_monai_pil_reader(tmp_path):
    item = _pair(tmp_path, "a")
    keys = ("image", "label")
    before = Compose([LoadImaged(keys=keys, reader="PILReader", image_only=True),
                      EnsureChannelFirstd(keys=keys, channel_dim="no_channel"),
                      ScaleIntensityRanged(keys=keys, a_min=0, a_max=255, b_min=0.0, b_max=1.0)])(item)
    now = slice_transforms(max(H, W))({**item})
    direct = Compose(slice_transforms(max(H, W)).transforms[:3])({**item})
    for key in keys:
        assert direct[key].shape == (1, W, H)
        torch.testing.assert_close(torch.as_tensor(direct[key]), before[key].as_tensor(), atol=1e-7, rtol=0)
    assert now["image"].shape == (1, max(H, W), max(H, W))


def test_16_bit_images_scale_by_65535_and_0_1_masks_load_like_0_255(tmp_path):
    eight = _pair(tmp_path, "a")
    sixteen = _pair(tmp_path, "b", image=_image8().astype(np.uint16) * 257, mask=_mask(1))
    transform = slice_transforms(16)
    expected, loaded = transform({**eight}), transform({**sixteen})
    torch.testing.assert_close(loaded["image"], expected["image"], atol=1e-6, rtol=0)
    assert torch.equal(loaded["label"], expected["label"]) and loaded["label"].sum() > 0
    raw = _pair(tmp_path, "c", image=np.full((H, W), 4096, np.uint16))
    assert transform(raw)["image"].max().item() == pytest.approx(4096 / 65535)


def _site(tmp_path, **pair_args) -> TrainConfig:
    base = tmp_path / "ds"
    base.mkdir()
    items = [_pair(base, "good"), _pair(base, "odd", **pair_args)]
    relative = [{key: str(value).removeprefix(f"{base}/") for key, value in item.items()} for item in items]
    (tmp_path / "client_s.json").write_text(json.dumps({"training": relative, "validation": relative[:1]}))
    return TrainConfig(dataset_base_dir=str(base), datalist_json_path=str(tmp_path), image_size=8)


def test_a_site_with_0_1_masks_starts_and_logs_the_datalist(tmp_path, caplog):
    config = _site(tmp_path, mask=_mask(1))
    with caplog.at_level(logging.WARNING, logger="fedsm.data.site_data"):
        data = load_site_data(config, "client_s")
    assert "client_s.json 'training': 1 of 2 masks use values {0, 1}" in caplog.text
    assert all(batch["label"].sum() > 0 for batch in data.train_loader)


def test_a_site_with_an_rgb_image_does_not_start(tmp_path):
    with pytest.raises(DataError, match="odd_img.png: image mode RGB"):
        load_site_data(_site(tmp_path, image_mode="RGB"), "client_s")
