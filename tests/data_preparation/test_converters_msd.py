"""MSD Task05: channel 0 of the 4D image, labels 1 and 2 merged, unreadable files reported by name."""

import pytest
from raw_builders import Grid, assert_converted, build_msd

from data_preparation.converters import msd
from data_preparation.converters.common import LayoutError
from data_preparation.converters.runner import convert_source, discover_source


def test_t2_channel_and_merged_labels_on_the_source_grid(tmp_path):
    raw, dataset, grid = tmp_path / "Raw", tmp_path / "dataset", Grid(origin=(12.5, -30.0, 7.0))
    truth = build_msd(raw, ["prostate_00", "prostate_01"], grid)
    (raw / "MSD" / "Task05_Prostate" / "imagesTr" / "._prostate_00.nii.gz").write_bytes(b"\x00\x05\x16\x07")

    report = convert_source(msd.CONVERTER, discover_source(msd.CONVERTER, raw), dataset)

    assert [c.case for c in report.converted] == ["prostate_00", "prostate_01"] and not report.failed
    for case, (t2, mask) in truth.items():
        assert_converted(dataset, "MSD", case, grid, t2, mask)


def test_a_corrupt_label_file_fails_by_name_and_the_other_cases_convert(tmp_path):
    raw, dataset = tmp_path / "Raw", tmp_path / "dataset"
    build_msd(raw, ["prostate_00", "prostate_01"], Grid())
    corrupt = raw / "MSD" / "Task05_Prostate" / "labelsTr" / "prostate_01.nii.gz"
    corrupt.write_bytes(b"not a nifti file")

    report = convert_source(msd.CONVERTER, discover_source(msd.CONVERTER, raw), dataset)

    assert [c.case for c in report.converted] == ["prostate_00"]
    assert str(corrupt) in report.failed["prostate_01"]
    assert not (dataset / "MSD" / "Image" / "prostate_01.nii.gz").exists()


def test_a_3d_image_is_reported(tmp_path):
    raw, dataset, grid = tmp_path / "Raw", tmp_path / "dataset", Grid()
    build_msd(raw, ["prostate_00"], grid)
    image = raw / "MSD" / "Task05_Prostate" / "imagesTr" / "prostate_00.nii.gz"
    label = raw / "MSD" / "Task05_Prostate" / "labelsTr" / "prostate_00.nii.gz"
    image.write_bytes(label.read_bytes())

    report = convert_source(msd.CONVERTER, discover_source(msd.CONVERTER, raw), dataset)

    assert "expected a 4D image" in report.failed["prostate_00"] and str(image) in report.failed["prostate_00"]


def test_the_task_folder_is_required(tmp_path):
    (tmp_path / "Raw" / "MSD" / "imagesTr").mkdir(parents=True)
    with pytest.raises(LayoutError, match="Task05_Prostate/imagesTr"):
        discover_source(msd.CONVERTER, tmp_path / "Raw")
