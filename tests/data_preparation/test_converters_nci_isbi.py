"""NCI-ISBI 2013: DICOM images and NRRD masks, two sites, masks resampled onto the image grid."""

import numpy as np
import pytest
from raw_builders import (
    FLIPPED_XY,
    Grid,
    assert_converted,
    box_mask,
    build_nci_isbi_image,
    phantom,
    write_dicom_series,
    write_nrrd,
)

from data_preparation.converters import nci_isbi
from data_preparation.converters.common import LayoutError
from data_preparation.converters.runner import convert_source, discover_source

IMAGE_GRID = Grid()
# Half the in-plane resolution over the same field of view: image voxels 2k and 2k+1 fall in mask voxel k.
COARSE_GRID = Grid(shape=(4, 8, 8), spacing=(1.0, 1.2, 3.0), origin=(-3.75, -4.7, 10.0))
# The image grid stored back to front along x and y.
FLIPPED_GRID = Grid(origin=(3.5, 4.0, 10.0), direction=FLIPPED_XY)


def two_label_mask(grid: Grid) -> np.ndarray:
    """Central gland (1) above peripheral zone (2)."""
    mask = box_mask(grid, 1, y=slice(1, 4), x=slice(2, 6))
    mask[1:3, 4:6, 2:6] = 2
    return mask


def masks_dir(raw, part):
    return raw / "NCI_ISBI" / "Mask" / part


def test_masks_are_resampled_merged_and_split_into_two_sites(tmp_path):
    raw, dataset = tmp_path / "Raw", tmp_path / "dataset"
    for seed, case in enumerate(["Prostate3T-01-0001", "ProstateDx-01-0002", "ProstateDx-01-0055"]):
        build_nci_isbi_image(raw, case, IMAGE_GRID, seed)
    fine = box_mask(IMAGE_GRID, 2)
    write_nrrd(masks_dir(raw, "Training") / "Prostate3T-01-0001.nrrd", fine[:, ::-1, ::-1], FLIPPED_GRID)
    coarse = two_label_mask(COARSE_GRID)
    write_nrrd(masks_dir(raw, "Test") / "ProstateDx-01-0002_truth.nrrd", coarse, COARSE_GRID)
    write_nrrd(masks_dir(raw, "Leaderboard") / "ProstateDx-01-0055.nrrd", coarse, COARSE_GRID)

    report = convert_source(nci_isbi.CONVERTER, discover_source(nci_isbi.CONVERTER, raw), dataset)

    assert {(c.site, c.case) for c in report.converted} == {
        ("NCI_ISBI_3T", "Prostate3T-01-0001"),
        ("NCI_ISBI_Dx", "ProstateDx-01-0002"),
    }
    assert list(report.dropped) == ["ProstateDx-01-0055"] and not report.failed
    assert_converted(dataset, "NCI_ISBI_3T", "Prostate3T-01-0001", IMAGE_GRID, phantom(IMAGE_GRID, 0), fine // 2)
    upsampled = (coarse > 0).astype(np.uint8).repeat(2, axis=1).repeat(2, axis=2)
    assert_converted(dataset, "NCI_ISBI_Dx", "ProstateDx-01-0002", IMAGE_GRID, phantom(IMAGE_GRID, 1), upsampled)
    assert not (dataset / "NCI_ISBI_Dx" / "Mask" / "ProstateDx-01-0055.nii.gz").exists()


def test_the_corrected_label_file_replaces_the_original_mask(tmp_path):
    raw, dataset = tmp_path / "Raw", tmp_path / "dataset"
    build_nci_isbi_image(raw, "ProstateDx-01-0006", IMAGE_GRID)
    corrected = box_mask(IMAGE_GRID, 1, x=slice(0, 3))
    write_nrrd(masks_dir(raw, "Training") / "ProstateDx-01-0006.nrrd", box_mask(IMAGE_GRID), IMAGE_GRID)
    write_nrrd(masks_dir(raw, "Training") / "ProstateDx-01-0006_correctedLabels.nrrd", corrected, IMAGE_GRID)

    report = convert_source(nci_isbi.CONVERTER, discover_source(nci_isbi.CONVERTER, raw), dataset)

    assert [c.mask.name for c in report.converted] == ["ProstateDx-01-0006_correctedLabels.nrrd"]
    assert_converted(dataset, "NCI_ISBI_Dx", "ProstateDx-01-0006", IMAGE_GRID, phantom(IMAGE_GRID), corrected)


def test_misplaced_masks_stray_files_and_extra_series_are_reported_by_name(tmp_path):
    raw, dataset = tmp_path / "Raw", tmp_path / "dataset"
    for case in ["Prostate3T-01-0001", "Prostate3T-01-0002", "Prostate3T-01-0003"]:
        build_nci_isbi_image(raw, case, IMAGE_GRID)
        write_nrrd(masks_dir(raw, "Training") / f"{case}.nrrd", box_mask(IMAGE_GRID), IMAGE_GRID)
    shifted = Grid(origin=(-4.0, -5.0, 40.0))
    misplaced = masks_dir(raw, "Training") / "Prostate3T-01-0002.nrrd"
    write_nrrd(misplaced, box_mask(shifted), shifted)
    second_series = (
        raw / "NCI_ISBI" / "Image" / "manifest-1" / "Prostate-3T" / "Prostate3T-01-0003" / "1.000000-study" / "4"
    )
    write_dicom_series(second_series, phantom(IMAGE_GRID), IMAGE_GRID)
    stray = masks_dir(raw, "Training") / "notes.nrrd"
    write_nrrd(stray, box_mask(IMAGE_GRID), IMAGE_GRID)

    report = convert_source(nci_isbi.CONVERTER, discover_source(nci_isbi.CONVERTER, raw), dataset)

    assert [c.case for c in report.converted] == ["Prostate3T-01-0001"]
    assert "outside the image volume" in report.failed["Prostate3T-01-0002"]
    assert str(misplaced) in report.failed["Prostate3T-01-0002"]
    assert "expected one DICOM series" in report.failed["Prostate3T-01-0003"]
    assert str(stray) in report.failed["notes.nrrd"]


def test_a_raw_folder_without_masks_stops_before_writing(tmp_path):
    build_nci_isbi_image(tmp_path / "Raw", "Prostate3T-01-0001", IMAGE_GRID)
    with pytest.raises(LayoutError, match="Mask"):
        discover_source(nci_isbi.CONVERTER, tmp_path / "Raw")
