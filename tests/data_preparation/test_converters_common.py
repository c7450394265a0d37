"""Shared converter parts: pairing by case name, grid checks, NIfTI geometry, re-runs, the defect table."""

from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk
from raw_builders import FLIPPED_XY, Grid, build_promise12, snapshot

from data_preparation.converters import CONVERTERS, SOURCE_OF_SITE, promise12
from data_preparation.converters.common import pair_by_case
from data_preparation.converters.runner import convert_source, discover_source
from data_preparation.converters.volumes import foreground_outside, same_grid, to_nifti, write_nifti
from data_preparation.known_defects import KNOWN_DEFECTS, dropped_cases, renamed_masks


def sitk_image(grid: Grid, array: np.ndarray | None = None) -> sitk.Image:
    image = sitk.GetImageFromArray(np.zeros(grid.shape, np.uint8) if array is None else array)
    image.SetSpacing(grid.spacing)
    image.SetOrigin(grid.origin)
    image.SetDirection(grid.direction.flatten().tolist())
    return image


def test_pairing_is_by_case_name_only():
    found = pair_by_case(
        "S",
        [("b", Path("img/b")), ("a", Path("img/a")), ("c", Path("img/c"))],
        [("a", Path("msk/x")), ("b", Path("msk/y")), ("d", Path("msk/d"))],
    )
    assert [(c.case, c.image.name, c.mask.name) for c in found.cases] == [("a", "a", "x"), ("b", "b", "y")]
    assert found.failed == {"c": "image img/c has no mask", "d": "mask msk/d has no image"}


def test_same_grid_tolerates_decimal_rounding_only():
    grid = Grid()
    assert same_grid(sitk_image(grid), sitk_image(Grid(origin=(-4.00001, -5.0, 10.0), spacing=(0.5000001, 0.6, 3.0))))
    assert not same_grid(sitk_image(grid), sitk_image(Grid(origin=(-4.2, -5.0, 10.0))))
    assert not same_grid(sitk_image(grid), sitk_image(Grid(direction=FLIPPED_XY)))
    assert not same_grid(sitk_image(grid), sitk_image(Grid(shape=(3, 16, 16))))


def test_foreground_outside_counts_mask_voxels_beyond_the_image():
    mask = np.zeros((4, 16, 16), np.uint8)
    mask[3, 0, :2] = 1
    image_grid = Grid(shape=(3, 16, 16))
    assert foreground_outside(sitk_image(Grid(), mask), sitk_image(image_grid)) == 2
    assert foreground_outside(sitk_image(Grid(), mask), sitk_image(Grid())) == 0


def test_nifti_geometry_is_the_source_geometry_in_ras(tmp_path):
    grid = Grid(direction=FLIPPED_XY)
    values = np.arange(np.prod(grid.shape), dtype=np.float32).reshape(grid.shape)
    array, affine = to_nifti(sitk_image(grid, values))
    np.testing.assert_allclose(affine, grid.ras_affine())
    assert array[3, 2, 1] == values[1, 2, 3]
    write_nifti(sitk_image(grid, values), tmp_path / "v.nii.gz")
    written = nib.load(tmp_path / "v.nii.gz")
    np.testing.assert_allclose(written.affine, grid.ras_affine(), atol=1e-5)
    np.testing.assert_array_equal(written.get_fdata(), array)
    assert [p.name for p in tmp_path.iterdir()] == ["v.nii.gz"]


def test_a_rerun_changes_nothing(tmp_path):
    raw, dataset = tmp_path / "Raw", tmp_path / "dataset"
    build_promise12(raw, ["Case00", "Case01"], Grid())
    convert_source(promise12.CONVERTER, discover_source(promise12.CONVERTER, raw), dataset)
    before = snapshot(dataset)

    report = convert_source(promise12.CONVERTER, discover_source(promise12.CONVERTER, raw), dataset)

    assert [c.case for c in report.skipped] == ["Case00", "Case01"] and not report.converted
    assert snapshot(dataset) == before
    assert [name for name, stamp in before.items() if stamp] == [
        "Promise12/Image/Case00.nii.gz",
        "Promise12/Image/Case01.nii.gz",
        "Promise12/Mask/Case00.nii.gz",
        "Promise12/Mask/Case01.nii.gz",
    ]


def test_a_case_with_only_its_image_written_is_converted_again(tmp_path):
    raw, dataset = tmp_path / "Raw", tmp_path / "dataset"
    build_promise12(raw, ["Case00"], Grid())
    convert_source(promise12.CONVERTER, discover_source(promise12.CONVERTER, raw), dataset)
    (dataset / "Promise12" / "Mask" / "Case00.nii.gz").unlink()

    report = convert_source(promise12.CONVERTER, discover_source(promise12.CONVERTER, raw), dataset)

    assert [c.case for c in report.converted] == ["Case00"]
    assert (dataset / "Promise12" / "Mask" / "Case00.nii.gz").exists()


def test_the_defect_table_names_known_sources_and_is_read_per_source():
    assert {d.source for d in KNOWN_DEFECTS} <= set(CONVERTERS)
    assert dropped_cases("I2CVB") == {"Patient_428260": "its ground-truth prostate mask misses a slice"}
    assert "ProstateDx-01-0055" in dropped_cases("NCI_ISBI")
    assert renamed_masks("NCI_ISBI") == {"ProstateDx-01-0006_correctedLabels": "ProstateDx-01-0006"}
    assert renamed_masks("MSD") == {}
    assert set(SOURCE_OF_SITE) == {"I2CVB", "MSD", "NCI_ISBI_3T", "NCI_ISBI_Dx", "Promise12", "PROSTATEx"}
