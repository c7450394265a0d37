"""PROSTATEx: the referenced T2 series plus DICOM-SEG zones merged onto its grid."""

import numpy as np
import pytest
from raw_builders import FLIPPED_XY, Grid, assert_converted, box_mask, build_prostatex, phantom

from data_preparation.converters import prostatex
from data_preparation.converters.common import LayoutError
from data_preparation.converters.runner import convert_source, discover_source

GRID = Grid(direction=FLIPPED_XY)


def zones() -> dict[str, np.ndarray]:
    """Two zones on slices 1-2 and a urethra reaching slice 3, where no zone is."""
    urethra = np.zeros(GRID.shape, np.uint8)
    urethra[1:4, 7:9, 7:9] = 1
    return {
        "Peripheral zone": box_mask(GRID, y=slice(8, 12)),
        "Transition zone": box_mask(GRID, y=slice(4, 7)),
        "Distal prostatic urethra": urethra,
    }


def test_segments_merge_onto_the_referenced_series(tmp_path):
    raw, dataset = tmp_path / "Raw", tmp_path / "dataset"
    build_prostatex(raw, "ProstateX-0000", GRID, zones())

    report = convert_source(prostatex.CONVERTER, discover_source(prostatex.CONVERTER, raw), dataset)

    assert [c.case for c in report.converted] == ["ProstateX-0000"] and not report.failed
    expected = box_mask(GRID, y=slice(8, 12)) | box_mask(GRID, y=slice(4, 7))
    expected[1:3, 7:9, 7:9] = 1  # the urethra where the zones are, not on slice 3
    assert_converted(dataset, "PROSTATEx", "ProstateX-0000", GRID, phantom(GRID, 1), expected)


def test_merge_zones_keeps_the_urethra_only_on_gland_slices():
    zone = np.zeros((3, 2, 2), bool)
    zone[0, 0, 0] = True
    urethra = np.zeros((3, 2, 2), bool)
    urethra[:, 1, 1] = True
    merged = prostatex.merge_zones([zone], [urethra])
    assert merged.dtype == np.uint8
    assert merged.sum(axis=(1, 2)).tolist() == [2, 0, 0]


def test_missing_seg_and_missing_referenced_series_are_reported_by_name(tmp_path):
    raw, dataset = tmp_path / "Raw", tmp_path / "dataset"
    seg = build_prostatex(raw, "ProstateX-0001", GRID, zones())
    build_prostatex(raw, "ProstateX-0002", GRID, zones()).unlink()
    image_case = raw / "PROSTATEx" / "Image" / "manifest-1" / "PROSTATEx" / "ProstateX-0001"
    for series in [p for p in image_case.rglob("*") if p.name.startswith("4.")]:
        for file in series.iterdir():
            file.unlink()

    report = convert_source(prostatex.CONVERTER, discover_source(prostatex.CONVERTER, raw), dataset)

    assert not report.converted
    assert "not found" in report.failed["ProstateX-0001"] and str(image_case) in report.failed["ProstateX-0001"]
    assert "expected one DICOM-SEG" in report.failed["ProstateX-0002"]
    assert seg.exists()


def test_a_raw_folder_without_image_folder_stops_before_writing(tmp_path):
    (tmp_path / "Raw" / "PROSTATEx" / "Mask").mkdir(parents=True)
    with pytest.raises(LayoutError, match="Image"):
        discover_source(prostatex.CONVERTER, tmp_path / "Raw")
