import hashlib
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_preparation.nifti_pairs import write_volume
from data_preparation.slicing import (
    foreground_slices,
    pair_cases,
    slice_case,
    slice_site,
    to_uint8_image,
    to_viewing_orientation,
)

RAS = np.diag([1.0, 1.0, 2.0, 1.0])


def _volume_pair(seed: int, shape=(12, 10, 6), foreground=(2, 3)) -> tuple[np.ndarray, np.ndarray]:
    """A small image with intensities up to ~2500 and a mask with foreground in the given slices."""
    rng = np.random.default_rng(seed)
    image = rng.uniform(0, 2500, shape).astype(np.float32)
    mask = np.zeros(shape, dtype=np.uint8)
    for z in foreground:
        mask[3:7, 2:6, z] = 1
    return image, mask


def _write_case(site_dir: Path, case: str, image: np.ndarray, mask: np.ndarray, affine=RAS) -> tuple[Path, Path]:
    image_path, mask_path = site_dir / "Image" / f"{case}.nii.gz", site_dir / "Mask" / f"{case}.nii.gz"
    write_volume(image_path, image, affine)
    write_volume(mask_path, mask, affine)
    return image_path, mask_path


def _snapshot(folder: Path) -> dict[str, tuple[int, str]]:
    return {
        str(p.relative_to(folder)): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _png(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.array(image)


def test_to_uint8_image_hand_computed_values():
    values = np.array([[-5.0, 0.0, 4.0, 8.0, 9.0], [1024.0, 2040.0, 2047.0, 2048.0, 3000.0]])
    # times 255 / 2048: 0.498 -> 0, 0.996 -> 0, 1.12 -> 1, 127.5 -> 127, 254.0 -> 254, 254.9 -> 254
    expected = np.array([[0, 0, 0, 0, 1], [127, 254, 254, 255, 255]], dtype=np.uint8)
    result = to_uint8_image(values)
    assert result.dtype == np.uint8
    np.testing.assert_array_equal(result, expected)
    np.testing.assert_array_equal(to_uint8_image(np.array([[25.0, 50.0]]), scale=100.0), [[63, 127]])
    np.testing.assert_array_equal(to_uint8_image(np.array([[1.5, 254.6]]), scale=255.0), [[1, 254]])


def test_to_uint8_image_equals_the_references_pil_conversion():
    """The reference scales in float64 (value / 2048, capped at 1, times 255) and lets PIL turn the float
    array into an 8-bit image (`Image.fromarray(...).convert("L")`); the result must be the same."""
    rng = np.random.default_rng(5)
    values = np.concatenate([rng.uniform(-50.0, 2600.0, 4000), np.arange(-3.0, 2100.0), [2047.99999999]])
    scaled = np.minimum(values / 2048.0, 1.0) * 255.0
    by_pil = np.asarray(Image.fromarray(scaled[None, :]).convert("L"))[0]
    np.testing.assert_array_equal(to_uint8_image(values), by_pil)


def test_to_viewing_orientation_puts_anterior_up_and_patient_right_on_the_left():
    ras_slice = np.zeros((4, 3), dtype=np.uint8)  # [x toward Right, y toward Anterior]
    ras_slice[3, 2] = 1  # right-most, anterior-most
    ras_slice[0, 2] = 2  # left-most, anterior-most
    ras_slice[3, 0] = 3  # right-most, posterior-most
    view = to_viewing_orientation(ras_slice)
    assert view.shape == (3, 4)
    assert view[0, 0] == 1 and view[0, 3] == 2 and view[2, 0] == 3
    assert np.count_nonzero(view) == 3


def test_foreground_slices_lists_axial_indices_with_mask():
    image, mask = _volume_pair(0, shape=(5, 5, 7), foreground=(1, 4))
    assert foreground_slices(image, mask) == [1, 4]
    with pytest.raises(ValueError, match="shape"):
        foreground_slices(image, mask[:, :, :6])


def test_pair_cases_pairs_by_name_whatever_the_creation_order(tmp_path):
    cases = [f"case{k}" for k in range(5)]
    for folder in ("Image", "Mask"):
        order = cases[:]
        random.Random(folder).shuffle(order)
        for case in order:
            image, mask = _volume_pair(int(case[-1]))
            write_volume(tmp_path / folder / f"{case}.nii.gz", image if folder == "Image" else mask, RAS)
    pairs = pair_cases(tmp_path / "Image", tmp_path / "Mask")
    assert [case for case, _, _ in pairs] == cases
    for case, image_path, mask_path in pairs:
        assert image_path == tmp_path / "Image" / f"{case}.nii.gz"
        assert mask_path == tmp_path / "Mask" / f"{case}.nii.gz"


def test_pair_cases_names_the_file_without_partner(tmp_path):
    image, mask = _volume_pair(0)
    _write_case(tmp_path, "case0", image, mask)
    write_volume(tmp_path / "Image" / "lonely.nii.gz", image, RAS)
    with pytest.raises(ValueError, match="lonely.nii.gz"):
        pair_cases(tmp_path / "Image", tmp_path / "Mask")


def test_slice_case_writes_oriented_foreground_slices(tmp_path):
    image, mask = _volume_pair(1, foreground=(1, 4))
    image_path, mask_path = _write_case(tmp_path / "3d", "c", image, mask)
    case_dir = tmp_path / "2d" / "c"
    assert slice_case(image_path, mask_path, case_dir) == 2
    assert sorted(p.name for p in (case_dir / "Image").iterdir()) == ["001.png", "004.png"]
    assert sorted(p.name for p in (case_dir / "Mask").iterdir()) == ["001.png", "004.png"]
    np.testing.assert_array_equal(
        _png(case_dir / "Image" / "004.png"), to_viewing_orientation(to_uint8_image(image[:, :, 4]))
    )
    np.testing.assert_array_equal(_png(case_dir / "Mask" / "001.png"), to_viewing_orientation(mask[:, :, 1] * 255))
    assert [p.name for p in (tmp_path / "2d").iterdir()] == ["c"]  # no temporary folder left


def test_slice_case_reorients_a_volume_stored_in_lps(tmp_path):
    """Stored LPS (x toward Left, y toward Posterior): voxel [0, 0] is patient right-anterior -> top left."""
    image = np.zeros((6, 5, 3), dtype=np.float32)
    image[0, 0, 1] = 2048.0
    mask = np.zeros((6, 5, 3), dtype=np.uint8)
    mask[0, 0, 1] = 1
    lps = np.diag([-1.0, -1.0, 2.0, 1.0])
    image_path, mask_path = _write_case(tmp_path / "3d", "c", image, mask, affine=lps)
    slice_case(image_path, mask_path, tmp_path / "2d" / "c")
    for folder in ("Image", "Mask"):
        view = _png(tmp_path / "2d" / "c" / folder / "001.png")
        assert view.shape == (5, 6)
        assert view[0, 0] == 255 and np.count_nonzero(view) == 1


def test_slice_case_errors_name_the_file_at_fault(tmp_path):
    image, mask = _volume_pair(2)
    image_path, mask_path = _write_case(tmp_path, "good", image, mask)
    out = tmp_path / "out"

    bad_mask = tmp_path / "Mask" / "short.nii.gz"
    write_volume(bad_mask, mask[:, :, :5], RAS)
    with pytest.raises(ValueError, match=r"short\.nii\.gz") as shape_error:
        slice_case(image_path, bad_mask, out / "c1")
    assert "shape" in str(shape_error.value)

    corrupt = tmp_path / "Image" / "corrupt.nii.gz"
    corrupt.write_bytes(b"\x1f\x8b this is not a NIfTI file")
    with pytest.raises(ValueError, match=r"corrupt\.nii\.gz"):
        slice_case(corrupt, mask_path, out / "c2")

    empty_mask = tmp_path / "Mask" / "empty.nii.gz"
    write_volume(empty_mask, np.zeros_like(mask), RAS)
    with pytest.raises(ValueError, match=r"empty\.nii\.gz.*no foreground"):
        slice_case(image_path, empty_mask, out / "c3")

    assert not out.exists() or list(out.iterdir()) == []  # nothing half-written


def test_slice_site_records_failures_and_a_rerun_changes_nothing(tmp_path):
    site_dir = tmp_path / "dataset" / "SITE"
    for k in range(2):
        _write_case(site_dir, f"case{k}", *_volume_pair(k))
    image, _ = _volume_pair(9)
    _write_case(site_dir, "broken", image, np.zeros(image.shape, dtype=np.uint8))
    out = tmp_path / "dataset_2D"

    first = slice_site(tmp_path / "dataset", "SITE", out)
    assert first.cases == {"case0": 2, "case1": 2}
    assert list(first.failed) == ["broken"] and "broken.nii.gz" in first.failed["broken"]
    assert first.skipped == []
    before = _snapshot(out)

    second = slice_site(tmp_path / "dataset", "SITE", out)
    assert second.cases == {} and second.skipped == ["case0", "case1"]
    assert list(second.failed) == ["broken"]
    assert _snapshot(out) == before

    third = slice_site(tmp_path / "dataset", "SITE", out, overwrite=True)
    assert third.cases == {"case0": 2, "case1": 2} and third.skipped == []
    after = _snapshot(out)
    digests = {name: digest for name, (_, digest) in before.items()}
    assert {name: digest for name, (_, digest) in after.items()} == digests
    assert sorted(p.name for p in (out / "SITE").iterdir()) == ["case0", "case1"]
