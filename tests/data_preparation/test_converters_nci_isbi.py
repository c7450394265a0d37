"""NCI-ISBI 2013: DICOM images and NRRD masks, two sites, masks resampled onto the image grid."""

import zipfile

import numpy as np
import pydicom
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
    shifted = Grid(shape=COARSE_GRID.shape, spacing=COARSE_GRID.spacing, origin=(-4.0, -5.0, 40.0))
    misplaced = masks_dir(raw, "Training") / "Prostate3T-01-0002.nrrd"
    write_nrrd(misplaced, box_mask(shifted, x=slice(2, 6), y=slice(2, 6)), shifted)
    second_series = (
        raw / "NCI_ISBI" / "Image" / "manifest-1" / "Prostate-3T" / "Prostate3T-01-0003" / "1.000000-study" / "4"
    )
    write_dicom_series(second_series, phantom(IMAGE_GRID), IMAGE_GRID, description="t2_tse_cor")
    stray = masks_dir(raw, "Training") / "notes.nrrd"
    write_nrrd(stray, box_mask(IMAGE_GRID), IMAGE_GRID)

    report = convert_source(nci_isbi.CONVERTER, discover_source(nci_isbi.CONVERTER, raw), dataset)

    assert [c.case for c in report.converted] == ["Prostate3T-01-0001"]
    assert "outside the image volume" in report.failed["Prostate3T-01-0002"]
    assert str(misplaced) in report.failed["Prostate3T-01-0002"]
    extra_series = report.failed["Prostate3T-01-0003"]
    assert "expected one DICOM series" in extra_series and "found 2: " in extra_series
    for folder, description in ((second_series.parent / "3.000000-T2", "t2_tse_tra"), (second_series, "t2_tse_cor")):
        uid = pydicom.dcmread(next(folder.iterdir())).SeriesInstanceUID
        assert f'{uid} "{description}" (4 files in {folder})' in extra_series
    assert str(stray) in report.failed["notes.nrrd"]


def asymmetric_mask(grid: Grid) -> np.ndarray:
    """A mask that no flip or shift maps onto itself."""
    mask = box_mask(grid, y=slice(4, 12), x=slice(2, 8))
    mask[1, 4:6, 2:4] = 0
    return mask


def test_a_header_that_agrees_with_the_image_grid_is_used(tmp_path):
    raw, dataset = tmp_path / "Raw", tmp_path / "dataset"
    build_nci_isbi_image(raw, "Prostate3T-01-0001", IMAGE_GRID)
    # the image's voxel grid, its header off by DICOM-style rounding: both placements agree
    rounded = Grid(origin=(-4.01, -4.99, 10.0), spacing=(0.5001, 0.6, 3.0))
    write_nrrd(masks_dir(raw, "Training") / "Prostate3T-01-0001.nrrd", asymmetric_mask(IMAGE_GRID), rounded)

    report = convert_source(nci_isbi.CONVERTER, discover_source(nci_isbi.CONVERTER, raw), dataset)

    assert not report.failed
    expected = asymmetric_mask(IMAGE_GRID)
    assert_converted(dataset, "NCI_ISBI_3T", "Prostate3T-01-0001", IMAGE_GRID, phantom(IMAGE_GRID), expected)


# The NRRD header puts the label 2 voxels (1 mm) further along x than the image voxels it was drawn on.
SHIFTED_HEADER = Grid(origin=(-3.0, -5.0, 10.0))


@pytest.mark.parametrize(
    ("nrrd_geometry", "expected"),
    [
        ("image", asymmetric_mask(IMAGE_GRID)),
        ("header", np.pad(asymmetric_mask(IMAGE_GRID), ((0, 0), (0, 0), (2, 0)))[:, :, :-2]),
    ],
)
def test_a_shifted_header_fails_unless_a_geometry_is_chosen(tmp_path, nrrd_geometry, expected):
    raw, dataset = tmp_path / "Raw", tmp_path / "dataset"
    build_nci_isbi_image(raw, "Prostate3T-01-0001", IMAGE_GRID)
    mask_path = masks_dir(raw, "Training") / "Prostate3T-01-0001.nrrd"
    write_nrrd(mask_path, asymmetric_mask(IMAGE_GRID), SHIFTED_HEADER)
    found = discover_source(nci_isbi.CONVERTER, raw)

    checked = convert_source(nci_isbi.CONVERTER, found, dataset)
    chosen = convert_source(nci_isbi.converter(nrrd_geometry), found, dataset)

    failure = checked.failed["Prostate3T-01-0001"]
    assert failure.startswith(f"mask {mask_path}: placed by its NRRD header it overlaps the image-geometry copy")
    assert "Dice 0.652 (< 0.95)" in failure
    assert "NRRD header size 16x16x4, spacing (0.5, 0.6, 3), origin (-3, -5, 10)" in failure
    assert "image size 16x16x4, spacing (0.5, 0.6, 3), origin (-4, -5, 10)" in failure
    assert "--nrrd-geometry header or image" in failure
    assert not chosen.failed
    assert_converted(dataset, "NCI_ISBI_3T", "Prostate3T-01-0001", IMAGE_GRID, phantom(IMAGE_GRID), expected)


def test_copying_the_image_geometry_needs_grids_of_one_size(tmp_path):
    raw, dataset = tmp_path / "Raw", tmp_path / "dataset"
    build_nci_isbi_image(raw, "Prostate3T-01-0001", IMAGE_GRID)
    mask_path = masks_dir(raw, "Training") / "Prostate3T-01-0001.nrrd"
    write_nrrd(mask_path, two_label_mask(COARSE_GRID), COARSE_GRID)

    report = convert_source(nci_isbi.converter("image"), discover_source(nci_isbi.CONVERTER, raw), dataset)

    assert report.failed["Prostate3T-01-0001"].startswith(
        f"cannot copy the image geometry onto mask {mask_path}: the sizes differ (NRRD header size 8x8x4"
    )


def test_a_raw_folder_without_masks_stops_before_writing(tmp_path):
    build_nci_isbi_image(tmp_path / "Raw", "Prostate3T-01-0001", IMAGE_GRID)
    with pytest.raises(LayoutError, match="Mask"):
        discover_source(nci_isbi.CONVERTER, tmp_path / "Raw")


LABEL_ZIPS = [
    "NCI_ISBI_Challenge-Prostate3T_Training_Segmentations.zip",
    "NCI_ISBI_Challenge-ProstateDx_Training_Segmentations.zip",
    "NCI-ISBI 2013 Prostate Challenge - Leaderboard.zip",
    "NCI-ISBI 2013 Prostate Challenge - Test.zip",
]


def test_label_zips_never_unpacked_are_one_layout_error(tmp_path):
    raw = tmp_path / "Raw"
    build_nci_isbi_image(raw, "Prostate3T-01-0001", IMAGE_GRID)
    mask_root = raw / "NCI_ISBI" / "Mask"
    mask_root.mkdir(parents=True)
    for name in LABEL_ZIPS:
        with zipfile.ZipFile(mask_root / name, "w") as archive:
            archive.writestr("Training/Prostate3T-01-0001.nrrd", b"")

    with pytest.raises(LayoutError) as error:
        discover_source(nci_isbi.CONVERTER, raw)

    assert str(error.value).startswith(
        f"{mask_root}: no *.nrrd label file; found 4 .zip file(s) ({', '.join(sorted(LABEL_ZIPS)[:3])}, ...); "
        "the .zip archives were not unpacked: unzip them into this folder; expected layout:"
    )


def test_image_manifests_never_fetched_are_one_layout_error(tmp_path):
    raw = tmp_path / "Raw"
    write_nrrd(masks_dir(raw, "Training") / "Prostate3T-01-0001.nrrd", box_mask(IMAGE_GRID), IMAGE_GRID)
    image_root = raw / "NCI_ISBI" / "Image"
    image_root.mkdir(parents=True)
    (image_root / "ISBI-Prostate-Challenge-Training.tcia").write_text("ListOfSeriesToDownload=\n1.2.3\n")

    with pytest.raises(LayoutError) as error:
        discover_source(nci_isbi.CONVERTER, raw)

    message = str(error.value)
    assert message.startswith(f"{image_root}: no case folder (Prostate3T-XX-XXXX or ProstateDx-XX-XXXX); found 1 .tcia")
    assert "open it with the NBIA Data Retriever" in message
