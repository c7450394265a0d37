"""Promise12: MHD/RAW pairs to NIfTI, paired by case name wherever they lie below Raw/Promise12."""

import numpy as np
import pytest
from raw_builders import FLIPPED_XY, Grid, assert_converted, build_promise12, write_mhd

from data_preparation.converters import promise12
from data_preparation.converters.common import LayoutError
from data_preparation.converters.runner import convert_source, discover_source


def test_pairs_from_several_parts_convert_and_test_data_is_ignored(tmp_path):
    raw, dataset = tmp_path / "Raw", tmp_path / "dataset"
    grid = Grid(spacing=(0.625, 0.625, 3.6), direction=FLIPPED_XY)
    truth = build_promise12(raw, ["Case00", "Case01"], grid, "TrainingData_Part1")
    truth |= build_promise12(raw, ["Case02"], grid, "TrainingData_Part2")
    write_mhd(raw / "Promise12" / "TestData" / "Case00.mhd", np.zeros(grid.shape, np.int16), grid)

    report = convert_source(promise12.CONVERTER, discover_source(promise12.CONVERTER, raw), dataset)

    assert [c.case for c in report.converted] == ["Case00", "Case01", "Case02"] and not report.failed
    for case, (image, mask) in truth.items():
        assert_converted(dataset, "Promise12", case, grid, image, mask)


def test_unpaired_duplicated_and_empty_cases_are_reported_by_name(tmp_path):
    raw, dataset, grid = tmp_path / "Raw", tmp_path / "dataset", Grid()
    build_promise12(raw, ["Case00", "Case01", "Case03"], grid, "Raw_Data")
    build_promise12(raw, ["Case01"], grid, "TrainingData_Part2")
    lonely = raw / "Promise12" / "Raw_Data" / "Case02.mhd"
    write_mhd(lonely, np.zeros(grid.shape, np.int16), grid)
    empty = raw / "Promise12" / "Raw_Data" / "Case03_segmentation.mhd"
    write_mhd(empty, np.zeros(grid.shape, np.uint8), grid)

    report = convert_source(promise12.CONVERTER, discover_source(promise12.CONVERTER, raw), dataset)

    assert [c.case for c in report.converted] == ["Case00"]
    assert "two images" in report.failed["Case01"] and "TrainingData_Part2" in report.failed["Case01"]
    assert report.failed["Case02"] == f"image {lonely} has no mask"
    assert "mask is empty" in report.failed["Case03"] and str(empty) in report.failed["Case03"]


def test_a_folder_without_case_files_stops_before_writing(tmp_path):
    (tmp_path / "Raw" / "Promise12" / "TrainingData_Part1.zip").mkdir(parents=True)
    with pytest.raises(LayoutError, match="CaseXX.mhd"):
        discover_source(promise12.CONVERTER, tmp_path / "Raw")


@pytest.mark.parametrize("test_folder", ["", "TrainingData_Part1"])
def test_test_data_unpacked_over_the_training_data_is_one_layout_error(tmp_path, test_folder):
    raw, grid = tmp_path / "Raw", Grid()
    build_promise12(raw, ["Case00", "Case01", "Case02"], grid, "TrainingData_Part1")
    build_promise12(raw, ["Case03", "Case04"], grid, "TrainingData_Part2")
    # the test zip (CaseNN.mhd without segmentation) unpacked flat into Raw/Promise12 or into a training folder
    for case in ("Case03", "Case04"):
        write_mhd(raw / "Promise12" / test_folder / f"{case}.mhd", np.zeros(grid.shape, np.int16), grid)

    with pytest.raises(LayoutError) as error:
        discover_source(promise12.CONVERTER, raw)

    assert str(error.value).startswith(
        f"{raw / 'Promise12' / test_folder}: 2 image(s) without segmentation named like training cases "
        "(Case03, Case04): this looks like the Promise12 test data unpacked over the training data"
    )
