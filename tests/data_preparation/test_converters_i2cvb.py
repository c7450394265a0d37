"""I2CVB: GE and Siemens DICOM series into one site, 0/255 masks to 0/1, the known defect dropped."""

import numpy as np
import pytest
from raw_builders import FLIPPED_XY, Grid, assert_converted, build_i2cvb, write_dicom_series

from data_preparation.converters import i2cvb
from data_preparation.converters.common import LayoutError
from data_preparation.converters.runner import convert_source, discover_source

CORONAL = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])


def test_both_vendors_convert_with_their_geometry_and_the_defect_is_dropped(tmp_path):
    raw, dataset = tmp_path / "Raw", tmp_path / "dataset"
    grids = {"Patient 383": ("GE", Grid(direction=CORONAL)), "Patient_512": ("Siemens", Grid(direction=FLIPPED_XY))}
    truth = build_i2cvb(raw, {**grids, "Patient_428260": ("GE", Grid())})

    report = convert_source(i2cvb.CONVERTER, discover_source(i2cvb.CONVERTER, raw), dataset)

    assert sorted(c.case for c in report.converted) == ["Patient_383", "Patient_512"]
    assert list(report.dropped) == ["Patient_428260"] and not report.failed
    for folder, (_, grid) in grids.items():
        case = folder.replace(" ", "_")
        assert_converted(dataset, "I2CVB", case, grid, *truth[case])
    assert not (dataset / "I2CVB" / "Image" / "Patient_428260.nii.gz").exists()


def test_a_mask_missing_a_slice_and_a_patient_without_mask_are_reported_by_name(tmp_path):
    raw, dataset = tmp_path / "Raw", tmp_path / "dataset"
    build_i2cvb(raw, {"Patient_1": ("GE", Grid()), "Patient_2": ("GE", Grid())})
    short = Grid(shape=(3, 16, 16))
    gt = raw / "I2CVB" / "GE" / "Patient_2" / "GT" / "prostate"
    for path in gt.iterdir():
        path.unlink()
    write_dicom_series(gt, np.full(short.shape, 255, np.int16), short)
    (raw / "I2CVB" / "GE" / "Patient_3" / "T2W").mkdir(parents=True)

    report = convert_source(i2cvb.CONVERTER, discover_source(i2cvb.CONVERTER, raw), dataset)

    assert [c.case for c in report.converted] == ["Patient_1"]
    assert str(gt) in report.failed["Patient_2"] and "grids disagree" in report.failed["Patient_2"]
    assert "has no mask" in report.failed["Patient_3"] and "Patient_3" in report.failed["Patient_3"]


def test_a_raw_folder_without_vendor_folders_stops_before_writing(tmp_path):
    (tmp_path / "Raw" / "I2CVB" / "ge-1-5t").mkdir(parents=True)
    with pytest.raises(LayoutError, match="GE"):
        discover_source(i2cvb.CONVERTER, tmp_path / "Raw")


def test_a_patient_with_gt_but_no_prostate_folder_names_the_folder_expected(tmp_path):
    raw, dataset = tmp_path / "Raw", tmp_path / "dataset"
    build_i2cvb(raw, {"Patient_1": ("GE", Grid()), "Patient_2": ("Siemens", Grid())})
    ground_truth = raw / "I2CVB" / "Siemens" / "Patient_2" / "GT"
    (ground_truth / "prostate").rename(ground_truth / "cg")
    (ground_truth / "pz").mkdir()

    report = convert_source(i2cvb.CONVERTER, discover_source(i2cvb.CONVERTER, raw), dataset)

    assert [c.case for c in report.converted] == ["Patient_1"]
    assert report.failed == {
        "Patient_2": f"{ground_truth}: no prostate folder; expected the prostate mask series in "
        f"{ground_truth / 'prostate'}, found cg, pz"
    }


def test_a_raw_folder_of_unextracted_parts_names_them(tmp_path):
    source = tmp_path / "Raw" / "I2CVB"
    source.mkdir(parents=True)
    for part in ("siemens-3t.tar.gz.aa", "siemens-3t.tar.gz.ab"):
        (source / part).write_bytes(b"\x1f\x8b")
    with pytest.raises(LayoutError) as error:
        discover_source(i2cvb.CONVERTER, tmp_path / "Raw")
    assert str(error.value).startswith(
        f"{source}: neither GE nor Siemens folder; found 1 .aa file(s) (siemens-3t.tar.gz.aa), "
        "1 .ab file(s) (siemens-3t.tar.gz.ab); expected layout:"
    )
